"""Text encoders and text conditioning in the nets: shapes and masks, the empty prompt, frozen tables
kept out of state_dicts, the hf kind from a local folder, and nets without text unchanged."""

import hashlib
import sys

import pytest
import torch

from toolkit.nets.point_transformer import PointTransformer
from toolkit.nets.unet import UNet
from toolkit.text import PAD, build_encoder, build_tokenizer
from toolkit.text.encoders import wordllama_table

SMALL = {"max_tokens": 12, "dim": 32, "layers": 1, "heads": 2, "dropout": 0.0}


def perturb(net: torch.nn.Module, seed: int = 0) -> None:
    """Random values in every parameter, so that zero-initialised layers (the text ones among them)
    take part in the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)


@pytest.mark.parametrize("kind", ["wordllama", "learned"])
def test_encoder_gives_a_start_token_then_the_prompt_masked_and_a_pooled_mean(kind):
    config = {"kind": kind, **SMALL}
    torch.manual_seed(0)
    encoder, tokens = build_encoder(config).eval(), build_tokenizer(config)(["a bold seven", "", "eight"])
    sequence, mask, pooled = encoder(tokens)
    longest = int((tokens != PAD).sum(1).max())  # the columns after the longest prompt are padding only: cut
    assert 0 < longest <= 12 and sequence.shape == (3, 1 + longest, 32) and mask.shape == (3, 1 + longest)
    assert pooled.shape == (3, 32)
    assert mask[:, 0].all() and torch.equal(mask[:, 1:], tokens[:, :longest] != PAD)
    assert mask[1].sum() == 1  # the empty prompt: only the start token
    expected = torch.stack([sequence[i][mask[i]].mean(0) for i in range(3)])
    assert torch.allclose(pooled, expected, atol=1e-6)
    alone = encoder(tokens[2:])  # a shorter sequence (one word), the same vectors: rows do not mix
    assert alone[0].shape[1] < sequence.shape[1]
    assert torch.allclose(alone[0][0][alone[1][0]], sequence[2][mask[2]], atol=1e-5)
    assert torch.allclose(alone[2][0], pooled[2], atol=1e-5)
    assert torch.equal(encoder.encode(None, 2)[0], encoder(torch.zeros(2, 12, dtype=torch.long))[0])
    with pytest.raises(ValueError, match="max_tokens=12"):
        encoder(torch.zeros(2, 5, dtype=torch.long))


def test_wordllama_table_comes_from_the_wheel_and_stays_out_of_the_state_dict():
    encoder = build_encoder({"kind": "wordllama", **SMALL})
    assert encoder.table.shape == (32001, 256) and (encoder.table[0] == 0).all()
    assert torch.equal(encoder.table[1:], wordllama_table())
    assert not encoder.table.requires_grad and encoder.table not in set(encoder.parameters())
    assert not any("table" in key for key in encoder.state_dict())
    fresh = build_encoder({"kind": "wordllama", **SMALL})
    fresh.load_state_dict(encoder.state_dict())  # strict: nothing missing, nothing unexpected


def test_bad_encoder_configs_name_the_key():
    with pytest.raises(ValueError, match="text_encoder.kind='bert'"):
        build_encoder({"kind": "bert"})
    with pytest.raises(ValueError, match="unknown text_encoder keys \\['width'\\]"):
        build_encoder({"kind": "learned", "width": 3})
    with pytest.raises(ValueError, match="divisible by text_encoder.heads"):
        build_encoder({"kind": "learned", "dim": 30, "heads": 4})


def tiny_unet(text_encoder=None):
    return UNet(1, base_channels=16, channel_mults=(1, 2), attention_levels=(1,), text_encoder=text_encoder)


def tiny_points(text_encoder=None):
    return PointTransformer(dim=32, depth=2, heads=2, num_latents=4, text_encoder=text_encoder)


NETS = {
    "unet": (tiny_unet, lambda g: torch.randn(2, 1, 8, 8, generator=g)),
    "points": (tiny_points, lambda g: torch.randn(2, 10, 3, generator=g)),
}


@pytest.mark.parametrize("name", NETS)
def test_text_nets_take_prompts_and_tokens_none_is_the_empty_prompt(name):
    build, draw = NETS[name]
    config = {"kind": "learned", **SMALL}
    torch.manual_seed(0)
    net = build(config).eval()
    generator = torch.Generator().manual_seed(1)
    x, t = draw(generator), torch.tensor([0.3, 0.7])
    tokens = build_tokenizer(config)(["a bold seven", "eight"])
    with torch.no_grad():
        perturb(net, seed=2)
        conditioned, empty = net(x, t, tokens=tokens), net(x, t)
        assert torch.equal(empty, net(x, t, tokens=torch.zeros_like(tokens)))
        assert not torch.allclose(conditioned, empty)
        swapped = net(x, t, tokens=tokens.flip(0))
        assert not torch.allclose(swapped, conditioned)
    assert net.text_encoder is not None and any("cross_attention" in key for key in net.state_dict())


@pytest.mark.parametrize("name", NETS)
def test_an_untrained_net_hears_the_prompt_and_its_encoder_learns_from_the_first_step(name):
    """The pooled vector reaches the net through a randomly initialised projection (as a class embedding
    would); a zero one would keep the encoder's gradients at zero until it grew. Cross-attention still
    starts at zero: with the pooled projection zeroed, the untrained net ignores the prompt."""
    build, draw = NETS[name]
    config = {"kind": "learned", **SMALL}
    torch.manual_seed(0)
    net = build(config)
    x, t = draw(torch.Generator().manual_seed(1)), torch.tensor([0.3, 0.7])
    tokens = build_tokenizer(config)(["a bold seven", "eight"])
    with torch.no_grad():  # as after some training of everything but the layers that bring the prompt in
        for key, parameter in net.named_parameters():
            if not ("cross_attention" in key or "text_" in key):
                parameter.add_(torch.randn_like(parameter) * 0.1)

    def encoder_gradient() -> float:
        net.zero_grad()
        net(x, t, tokens=tokens).square().mean().backward()
        return sum(p.grad.abs().sum().item() for p in net.text_encoder.parameters() if p.grad is not None)

    with torch.no_grad():
        assert not torch.allclose(net(x, t, tokens=tokens), net(x, t, tokens=tokens.flip(0)))
    assert encoder_gradient() > 0
    with torch.no_grad():
        torch.nn.init.zeros_(net.text_pooled.weight)
        torch.nn.init.zeros_(net.text_pooled.bias)
        assert torch.equal(net(x, t, tokens=tokens), net(x, t))
    assert encoder_gradient() == 0


@pytest.mark.parametrize("name", NETS)
def test_a_net_without_text_encoder_refuses_tokens(name):
    net = NETS[name][0]()
    x = NETS[name][1](torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="without a text encoder"):
        net(x, torch.tensor([0.5, 0.5]), tokens=torch.ones(2, 4, dtype=torch.long))


def test_nets_without_text_are_those_of_before_prompts():
    """State_dict keys, initial weights and outputs equal those recorded from the nets before text
    conditioning existed (commit 8280dc6)."""
    torch.manual_seed(0)
    unet = UNet(1, base_channels=16, channel_mults=(1, 2), attention_levels=(1,), num_classes=3)
    points = PointTransformer(num_classes=2, dim=32, depth=2, heads=2, num_latents=4)
    recorded = {"386ce3c8822f4ec3": 983.9787078814129, "7ddec83d7715b699": 16.667217749645715}
    for net in (unet, points):
        keys = hashlib.sha256(" ".join(net.state_dict()).encode()).hexdigest()[:16]
        assert keys in recorded
        assert sum(v.double().sum().item() for v in net.state_dict().values()) == pytest.approx(recorded[keys], 1e-12)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for parameter in net.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    generator = torch.Generator().manual_seed(1)
    x, cloud = torch.randn(2, 1, 8, 8, generator=generator), torch.randn(2, 10, 3, generator=generator)
    t = torch.tensor([0.3, 0.7])
    with torch.no_grad():
        image_out, point_out = unet(x, t, torch.tensor([0, 3])), points(cloud, t, torch.tensor([1, 2]))
    assert image_out.double().sum().item() == pytest.approx(-10.266698741354048, rel=1e-6)
    assert image_out.double().abs().sum().item() == pytest.approx(10.59810833632946, rel=1e-6)
    assert point_out.double().sum().item() == pytest.approx(-37.398213505744934, rel=1e-6)
    assert point_out.double().abs().sum().item() == pytest.approx(38.25490313768387, rel=1e-6)


# --- hf: a tiny randomly initialised BERT saved to a temporary folder -------------------------------------------

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "bold", "thin", "seven", "eight", "leaning", "right"]


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("tiny_bert")
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    transformers.BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    transformers.BertModel(config).save_pretrained(folder)
    return folder


def test_hf_encoder_and_tokenizer_load_from_a_local_folder(bert_folder):
    config = {"kind": "hf", "path": str(bert_folder), **SMALL}
    tokens = build_tokenizer(config)(["a bold seven", ""])
    assert tokens[0, :5].tolist() == [2 + 1, 5 + 1, 6 + 1, 8 + 1, 3 + 1]  # [CLS] a bold seven [SEP], shifted
    assert (tokens[1] == PAD).all()
    encoder = build_encoder(config)
    sequence, mask, pooled = encoder(tokens)
    assert sequence.shape == (2, 6, 32) and mask[0].sum() == 6 and mask[1].sum() == 1  # cut after the longest
    assert torch.isfinite(sequence).all() and torch.isfinite(pooled).all()
    assert not any(key.startswith("frozen") for key in encoder.state_dict())
    trainable = sum(p.numel() for p in encoder.parameters())
    assert trainable == sum(p.numel() for name, p in encoder.named_parameters() if not name.startswith("frozen"))
    assert all(not p.requires_grad for p in encoder.frozen.parameters())
    encoder.double()
    assert next(encoder.frozen.parameters()).dtype == torch.float64
    assert encoder(tokens)[0].dtype == torch.float64
    net = tiny_unet(config)
    assert net(torch.zeros(2, 1, 8, 8), torch.tensor([0.5, 0.5]), tokens=tokens).shape == (2, 1, 8, 8)


def test_hf_errors_say_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="needs text_encoder.path"):
        build_encoder({"kind": "hf"})
    with pytest.raises(ValueError, match="is not a folder"):
        build_tokenizer({"kind": "hf", "path": str(tmp_path / "missing")})
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ValueError, match="pip install toolkit\\[text-hf\\]"):
        build_encoder({"kind": "hf", "path": str(tmp_path)})
