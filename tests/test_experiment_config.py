"""experiment.py: YAML + --set overrides into typed sections; every bad key or value is a named error."""
from pathlib import Path

import pytest
import yaml

from experiment import ConfigError, experiment_from_dict, load_experiment

REPO = Path(__file__).resolve().parent.parent


def test_paper_config_loads_with_the_paper_settings():
    exp = load_experiment(REPO / "configs/olmo2_metamath.yaml")
    assert exp.adapter.method == "giva" and exp.adapter.r == 64 and exp.adapter.dropout == 0.0
    assert exp.adapter.targets == ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
    t = exp.train
    assert (t.batch_size, t.epochs, t.schedule, t.warmup_ratio, t.val_per_epoch) == (32, 1, "cosine", 0.03, 10)
    assert exp.data.max_tokens == 1024 and exp.probe.micro_batches == 0
    assert exp.eval.max_new_tokens == 256 and exp.run_dir() == Path.cwd() / "runs/olmo2_metamath"


def test_relative_paths_resolve_against_the_working_directory(tmp_path, monkeypatch):
    """One rule: relative config paths (and --set ones) are the working directory's, made absolute once, so a
    run's config.yaml names the same files whatever folder eval.py is started from; package: paths stay."""
    monkeypatch.chdir(tmp_path)
    exp = load_experiment(REPO / "configs/tiny_math.yaml", ["data.cache_dir=elsewhere/cache", "eval.path=/abs/g.jsonl"])
    assert exp.model.path == str(tmp_path / ".cache/tiny_olmo2") and exp.train.out_dir == str(tmp_path / "runs")
    assert exp.data.cache_dir == str(tmp_path / "elsewhere/cache") and exp.eval.path == "/abs/g.jsonl"
    assert load_experiment(REPO / "configs/demo.yaml").model.path.startswith("package:")


def test_tiny_config_loads():
    exp = load_experiment(REPO / "configs/tiny_math.yaml")
    assert exp.model.random_init["family"] == "olmo2" and exp.data.synthetic > 0


def test_overrides_are_parsed_as_yaml():
    exp = load_experiment(REPO / "configs/olmo2_metamath.yaml",
                          ["train.lr=3e-4", "adapter.targets=[q_proj, v_proj]", "adapter.r=512",
                           "adapter.alpha=16", "adapter.svd_q=null", "train.warmup_ratio=0", "train.warmup_steps=100"])
    assert exp.train.lr == 3e-4 and isinstance(exp.train.lr, float)  # YAML 1.1 reads 3e-4 as a string
    assert exp.adapter.targets == ["q_proj", "v_proj"] and exp.adapter.r == 512 and exp.adapter.alpha == 16.0
    assert exp.adapter.svd_q is None and exp.train.warmup_steps == 100


@pytest.mark.parametrize("override, words", [
    (["train.lrr=1"], ["unknown key 'train.lrr'", "did you mean 'train.lr'"]),
    (["trian.lr=1"], ["unknown section 'trian'", "did you mean 'train'"]),
    (["train.schedule=cosin"], ["'train.schedule'", "valid choices: cosine, linear, constant"]),
    (["train.batch_size=3.5"], ["'train.batch_size'", "expected an integer"]),
    (["train.batch_size=true"], ["'train.batch_size'", "expected an integer"]),
    (["train.lr=fast"], ["'train.lr'", "expected a number"]),
    (["adapter.targets=q_proj"], ["'adapter.targets'", "expected a list"]),
    (["model.dtype=fp16"], ["'model.dtype'", "valid choices: auto, float32, bfloat16"]),
    (["data.task=glue"], ["'data.task'", "valid choices: metamath"]),
    (["train.batch_size=30"], ["not a multiple of", "train.micro_batch_size=4"]),
    (["train.warmup_steps=10"], ["warmup_ratio or train.warmup_steps, not both"]),
    (["train.epochs=0"], ["'train.epochs'", "must be a finite number > 0"]),
    (["train.lr=.nan"], ["'train.lr'", "must be a finite number > 0"]),
    (["train.lr=0"], ["'train.lr'", "must be a finite number > 0"]),
    (["train.eps=-1e-8"], ["'train.eps'", "must be a finite number > 0"]),
    (["train.grad_clip=.inf"], ["'train.grad_clip'", "finite number >= 0"]),
    (["train.betas=[0.9, 1.5]"], ["'train.betas'", "in [0, 1)"]),
    (["train.lr"], ["expected section.key=value"]),
    (["train.parallel=zero3"], ["'train.parallel'", "valid choices: ddp, fsdp"]),
    (["train.parallel=fsdp", "probe.offload_to_cpu=true"], ["train.parallel=fsdp with probe.offload_to_cpu=true"]),
])
def test_bad_overrides_name_the_key(override, words):
    with pytest.raises(ConfigError) as e:
        load_experiment(REPO / "configs/olmo2_metamath.yaml", override)
    for word in words:
        assert word in str(e.value)


def test_bad_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: [1\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_experiment(bad)
    twice = tmp_path / "twice.yaml"
    twice.write_text("train:\n  lr: 1.0e-2\n  epochs: 2\n  lr: 3.0e-3\n")
    with pytest.raises(ConfigError, match="twice.yaml: not valid YAML.*duplicate key 'lr'"):
        load_experiment(twice)
    with pytest.raises(ConfigError, match="missing.yaml: config file not found"):
        load_experiment(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="section 'train' must be a mapping"):
        experiment_from_dict({"train": [1, 2]})
    with pytest.raises(ConfigError, match="unknown key 'data.n_trian'.*did you mean 'data.n_train'"):
        experiment_from_dict({"data": {"n_trian": 5}}, source="x.yaml")


def test_train_py_prints_the_resolved_config_and_lists_configs(capsys):
    import train
    train.main([str(REPO / "configs/tiny_math.yaml"), "--set", "train.lr=0.5", "--print-config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["lr"] == 0.5 and printed["train"]["micro_batch_tokens"] == 0  # defaults shown too
    with pytest.raises(SystemExit):
        train.main(["--help"])
    assert "configs/olmo2_metamath.yaml" in capsys.readouterr().out
