"""DiffusionModule plumbing: condition dropout, batched generation, save_module; and the shared
helpers beside it (config composition, atomic writes, CLI errors)."""

import pytest
import torch
from conftest import tiny_image_config
from omegaconf import OmegaConf

from toolkit import cli, config, files, train
from toolkit.module import DiffusionModule, load_module, save_module


@pytest.fixture(scope="module")
def module():
    torch.manual_seed(0)
    return DiffusionModule(OmegaConf.to_container(tiny_image_config("loss.p_uncond=0.5"), resolve=True))


def test_condition_dropout_replaces_dropped_samples_by_the_null_conditioning(module):
    labels = torch.arange(8) % 3
    assert torch.equal(module.drop_cond({"label": labels}, 0.0, None)["label"], labels)
    everything = module.drop_cond({"label": labels}, 0.999999, torch.Generator().manual_seed(0))
    assert (everything["label"] == module.domain.num_classes).all()
    some = module.drop_cond({"label": labels}, 0.5, torch.Generator().manual_seed(0))["label"]
    assert ((some == labels) | (some == module.domain.num_classes)).all()
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    assert module.drop_cond({}, 0.5, generator) == {} and torch.equal(generator.get_state(), state)


def test_generate_in_batches_gives_the_same_samples(module):
    whole = module.generate(5, seed=3, steps=3, guidance=2.0, trajectory_every=1)
    for batch_size in (2, 5, 8):
        parts = module.generate(5, seed=3, steps=3, guidance=2.0, trajectory_every=1, batch_size=batch_size)
        assert parts["seeds"] == whole["seeds"] and torch.equal(parts["labels"], whole["labels"])
        assert torch.allclose(parts["x"], whole["x"], atol=1e-5)  # the network's CPU kernels vary by batch
        assert torch.allclose(parts["trajectory"], whole["trajectory"], atol=1e-5)
    with pytest.raises(ValueError, match="batch_size"):
        module.generate(2, batch_size=0)


def test_generate_takes_an_edit_shape_and_splits_its_known_region(module):
    shape = (3, 1, 20, 18)
    mask = torch.zeros(shape[1:])
    mask[:, :4] = 1
    kwargs = {"shape": shape, "known_mask": mask, "known_values": torch.full(shape[1:], 0.25), "steps": 2}
    whole = module.generate(3, seed=0, **kwargs)
    parts = module.generate(3, seed=0, batch_size=2, **kwargs)
    assert whole["x"].shape == shape and (whole["x"][:, :, :4] == 0.25).all()
    assert torch.allclose(parts["x"], whole["x"], atol=1e-5)


def test_save_module_writes_a_checkpoint_load_module_and_lightning_read(module, tmp_path):
    path = save_module(module, tmp_path / "sub" / "model.ckpt")
    assert path == tmp_path / "sub" / "model.ckpt" and [p.name for p in path.parent.iterdir()] == ["model.ckpt"]
    loaded = load_module(path)
    assert loaded.config == module.config
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in module.state_dict().items())
    again = DiffusionModule.load_from_checkpoint(path, map_location="cpu")
    assert torch.equal(again.generate(2, steps=2)["x"], loaded.generate(2, steps=2)["x"])


def test_atomic_path_replaces_files_and_folders_whole_and_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out"
    for content in ("one", "two"):
        with files.atomic_path(target) as partial:
            partial.mkdir()
            (partial / "a.txt").write_text(content)
        assert [p.name for p in tmp_path.iterdir()] == ["out"] and (target / "a.txt").read_text() == content
    with pytest.raises(RuntimeError), files.atomic_path(tmp_path / "f.txt") as partial:
        partial.write_text("half")
        raise RuntimeError
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert files.write_text_atomic(tmp_path / "f.txt", "x").read_text() == "x"


def test_compose_config_lives_in_config_and_stays_importable_from_train():
    assert train.compose_config is config.compose_config
    assert config.compose_config(["domain=audio"]).domain._target_.endswith("AudioDomain")


def test_cli_fail_prints_one_error_line_and_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.fail("n=0 is not allowed")
    assert exit_info.value.code == 2 and capsys.readouterr().err == "error: n=0 is not allowed\n"


def test_method_options_reach_only_methods_that_take_them():
    """The image domain composes the unipc group (order, variant); sampler.method=ddim on top of it
    must not hand ddim unipc's options, while unipc and dpmpp_3m get the ones they take."""
    from toolkit.module import sampler_options

    cfg = OmegaConf.to_container(config.compose_config(["sampler.method=ddim"]).sampler)
    assert cfg["order"] == 2 and sampler_options(cfg, "ddim", 10) == {}
    assert sampler_options({**cfg, "method": "unipc"}, "unipc", 10) == {"order": 2, "variant": "bh2"}
    assert sampler_options({**cfg, "method": "dpmpp_3m"}, "dpmpp_3m", 10) == {"order": 2}
