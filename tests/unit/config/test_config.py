"""Config: precedence, types, presets, rank-dependent resolution, and one-line errors."""
import json
import math
import re

import pytest

from mpisub import config
from mpisub._util.errors import UserError
from mpisub.config import parse
from mpisub.train.resolve import settle


def test_precedence_defaults_preset_file_set(tmp_path):
    f = tmp_path / "run.toml"
    f.write_text('[train]\nlr = 0.25\nrounds = 7\n[masks]\nkeep = 0.3\n')
    cfg = config.build("dropout", str(f), ["train.rounds=9", "output.record_masks=true"])
    assert cfg.masks.kind == "bernoulli" and cfg.masks.subnets == 1      # preset
    assert cfg.masks.keep == 0.3 and cfg.train.lr == 0.25                 # file over preset
    assert cfg.train.rounds == 9 and cfg.output.record_masks is True      # --set over file
    assert cfg.model.width == config.ModelConfig().width                  # default


def test_presets_are_what_design_md_says():
    r = {name: settle(config.build(name), 4 if name in ("ist", "multisample") else 1)[0]
         for name in config.PRESETS}
    gd = r["gd"]
    assert (gd.masks.kind, gd.masks.subnets, gd.masks.keep, gd.train.local_steps) == ("full", 1, 1.0, 1)
    assert (r["dropout"].masks.kind, r["dropout"].masks.subnets, r["dropout"].train.local_steps) == ("bernoulli", 1, 1)
    assert r["multisample"].masks.subnets > 1 and r["multisample"].train.local_steps == 1
    assert (r["ist"].masks.kind, r["ist"].masks.subnets, r["ist"].masks.keep) == ("partition", 4, 0.25)
    assert r["ist"].train.local_steps > 1


def test_defaults_are_the_ist_job():
    assert config.Config() == config.build("ist")


def test_resolve_fills_rank_dependent_values():
    cfg = settle(config.build(), 2)[0]
    assert cfg.masks.subnets == 2 and cfg.masks.keep == 0.5
    cfg = settle(config.build(overrides=["masks.kind='bernoulli'", "masks.subnets=6"]), 3)[0]
    assert cfg.masks.keep == 0.5
    cfg = settle(config.build(overrides=["masks.kind='categorical'", "masks.subnets=8"]), 4)[0]
    assert cfg.masks.keep == 0.125


def test_set_values_are_read_as_toml_and_type_checked():
    assert parse.parse_assignment("train.lr=0.5") == ("train.lr", 0.5)
    assert parse.parse_assignment("masks.kind=bernoulli") == ("masks.kind", "bernoulli")
    assert config.build(overrides=["train.lr=3"]).train.lr == 3.0  # an int is a fine float
    assert config.build(overrides=["train.rounds=4.0"]).train.rounds == 4
    assert config.build(overrides=["output.dir=2024"]).output.dir == "2024"  # a string key takes the text


def test_printed_toml_reads_back_as_the_same_config():
    cfg = settle(config.build("dropout", overrides=["output.dir=runs/x y"]), 1)[0]
    parsed = parse.tomllib.loads(cfg.to_toml())
    assert config.from_dict(parsed) == cfg


def test_config_round_trips_through_json():
    cfg = settle(config.build("multisample"), 2)[0]
    assert config.from_dict(json.loads(cfg.to_json())) == cfg


BAD = [
    (["train.lrr=1"], "unknown config key 'train.lrr'; did you mean 'train.lr'?"),
    (["nosection=1"], "unknown config key 'nosection'; known keys: data.source, data.n"),
    (["train.lr"], "expected section.key=value"),
    (["train.lr=fast"], "train.lr must be a number"),
    (["train.rounds=2.5"], "train.rounds must be an integer"),
    (["train.rounds=true"], "train.rounds must be an integer"),
    (["output.overwrite=1"], "output.overwrite must be true or false"),
    (["train.lr=0"], "train.lr = 0.0 is out of range"),
    (["train.lr=-1"], "train.lr = -1.0 is out of range"),
    (["train.lr=nan"], "train.lr = nan is out of range"),
    (["train.lr=inf"], "train.lr = inf is out of range"),
    (["train.rounds=0"], "train.rounds = 0 is out of range"),
    (["train.local_steps=0"], "train.local_steps = 0 is out of range"),
    (["masks.keep=1.5"], "masks.keep = 1.5 is out of range"),
    (["masks.kind='bernouli'"], "masks.kind = 'bernouli' is not one of"),
    (["model.dtype='float16'"], "model.dtype = 'float16' is not one of"),
    (["model.init_scale=0"], "model.init_scale = 0.0 is out of range"),
    (["data.n=0"], "data.n = 0 is out of range"),
    (["optim.lr=1"], "unknown config key 'optim.lr'"),
    (["masks.keep=-0.2"], "masks.keep = -0.2 is out of range"),
    (["train.plan='columns'"], "train.plan = 'columns' is not one of auto, rows, outputs"),
    (["data.normalize='zscore'"], "data.normalize = 'zscore' is not one of"),
]


@pytest.mark.parametrize("overrides,message", BAD)
def test_bad_values_name_the_key(overrides, message):
    with pytest.raises(UserError, match=re.escape(message)) as e:
        config.build(overrides=overrides)
    assert "\n" not in str(e.value)


BAD_RESOLVE = [
    (["masks.subnets=3", "train.plan='rows'"], 2, "masks.subnets = 3 is not a multiple of the 2 MPI ranks"),
    (["model.width=3", "masks.subnets=4"], 4, "model.width = 3 is smaller than masks.subnets = 4"),
    (["masks.kind='full'", "masks.subnets=2"], 2, "masks.kind = 'full' means one subnetwork"),
    (["masks.keep=0.3"], 2, "masks.keep = 0.3 does not apply to masks.kind = 'partition'"),
    (["data.source='data.txt'"], 1, "data.source = 'data.txt' is neither 'synthetic' nor a data file"),
    (["data.holdout=0.2"], 1, "data.holdout and data.test_source are for a data file"),
    (["train.loss='cross_entropy'"], 1, "train.loss = 'cross_entropy' needs class targets"),
    (["data.source='a.npz'", "data.test_n=10"], 1, "data.test_n is for the synthetic source"),
    (["data.source='a.npz'", "data.holdout=0.2", "data.test_source='b.npz'"], 1, "set one of them"),
]


@pytest.mark.parametrize("overrides,ranks,message", BAD_RESOLVE)
def test_inconsistent_values_are_refused(overrides, ranks, message):
    with pytest.raises(UserError, match=re.escape(message)):
        settle(config.build(overrides=overrides), ranks)


def test_batch_size_is_checked_against_the_data():
    given = config.build(overrides=["train.batch_size=100"])
    assert settle(given, 1, (100, 3, 1))[0].data.d == 3
    with pytest.raises(UserError, match="train.batch_size = 100 exceeds the 99 samples of the data"):
        settle(given, 1, (99, 3, 1))


def test_resume_allows_only_keys_that_do_not_change_results():
    stored = settle(config.build(), 2)[0].to_dict()
    cfg = config.for_resume(stored, ["train.rounds=500", "output.log_every=7"])
    assert (cfg.train.rounds, cfg.output.log_every, cfg.masks.subnets) == (500, 7, 2)
    with pytest.raises(UserError, match="train.lr = 1.0 here, but the run being resumed has train.lr = 4.0"):
        config.for_resume(stored, ["train.lr=1"])
    # repeating a stored value is not a change: a job script may pass the same options every time
    assert config.for_resume(stored, ["train.lr=4", "masks.subnets=2"]).masks.subnets == 2
    with pytest.raises(UserError, match="masks.subnets = 2"):
        config.for_resume(stored, ["masks.subnets=0"])


def test_bad_config_files(tmp_path):
    with pytest.raises(UserError, match="config file .*missing.toml.* not found"):
        config.build(file=str(tmp_path / "missing.toml"))
    (tmp_path / "broken.toml").write_text("[train\nlr = 1\n")
    with pytest.raises(UserError, match="is not valid TOML"):
        config.build(file=str(tmp_path / "broken.toml"))
    (tmp_path / "flat.toml").write_text("lr = 1\n")
    with pytest.raises(UserError, match="'lr' must be a \\[section\\] table"):
        config.build(file=str(tmp_path / "flat.toml"))
    with pytest.raises(UserError, match="unknown preset 'sgd'"):
        config.build("sgd")


@pytest.mark.parametrize("overrides,message", [
    (["train.learning_rate=1"], "unknown config key 'train.learning_rate'; did you mean 'train.lr'?"),
    (["train.epochs=9"], "did you mean 'train.rounds'?"),
    (["train.locl_steps=3"], "did you mean 'train.local_steps'?"),
    (["optim.lr=1"], "did you mean 'train.lr'?"),
    (["masks.kind='bernouli'"], "masks.kind = 'bernouli' is not one of bernoulli, categorical, partition, full; "
                                "did you mean 'bernoulli'?"),
    (["train.plan='row'"], "did you mean 'rows'?"),
])
def test_did_you_mean_over_keys_synonyms_and_choices(overrides, message):
    with pytest.raises(UserError, match=re.escape(message)):
        config.build(overrides=overrides)


def test_a_bad_key_in_a_config_file_names_the_file_and_line(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text("[model]\nwidth = 64\n\n[train]\nrounds = 3\nlearning_rate = 0.1\n")
    with pytest.raises(UserError, match=re.escape(f"config file {str(path)!r}, line 6: unknown config key "
                                                  "'train.learning_rate'; did you mean 'train.lr'?")):
        config.build(file=str(path))


@pytest.mark.parametrize("preset,ranks,every", [("ist", 2, 12), ("ist", 4, 12), ("gd", 1, 60), ("dropout", 1, 120),
                                                ("multisample", 2, 30)])
def test_auto_eval_every_keeps_evaluation_near_5_percent_and_gives_20_evaluations(preset, ranks, every):
    """One evaluation (two products of the whole network, 4 n d m flops, times 3 for what flops do
    not count) against a round (4 p keep tau b d m flops): every ceil(3 n / (0.05 p keep tau b))
    rounds; by hand for n = 512, full batch: IST p keep = 1, tau = 5 -> 12; gd 1 x 1 x 1 -> 60;
    dropout 1 x 0.5 x 1 -> 120; multisample 4 x 0.5 x 1 -> 30. Runs long enough (10000 rounds)
    get that; shorter ones at least 20 evaluations (60 rounds: every 3)."""
    long = settle(config.build(preset, overrides=["train.rounds=10000"]), ranks, (512, 16, 1))[0]
    assert long.output.eval_every == every
    short = settle(config.build(preset), ranks, (512, 16, 1))[0]
    assert short.output.eval_every == 3 and short.train.rounds // short.output.eval_every == 20
    set_by_hand = settle(config.build(preset, overrides=["output.eval_every=7"]), ranks, (512, 16, 1))[0]
    assert set_by_hand.output.eval_every == 7


@pytest.mark.parametrize("preset,ranks,per_round", [("ist", 2, 5.0), ("ist", 4, 5.0), ("gd", 1, 1.0),
                                                    ("dropout", 1, 0.5), ("multisample", 2, 2.0)])
def test_a_budget_in_full_gradients_sets_the_rounds_of_any_scheme(preset, ranks, per_round):
    """A round's work in full gradients, by hand: IST p keep = 1 times tau = 5; gd 1; dropout keep
    0.5; multisample 4 x 0.5. A budget of 60 full gradients is 60 / that rounds (rounded up); with
    minibatches of 128 of the 512 samples four times as many."""
    cfg = settle(config.build(preset, overrides=["train.budget=60"]), ranks, (512, 16, 1))[0]
    assert config.compute_per_round(cfg) == per_round and cfg.train.rounds == math.ceil(60 / per_round)
    batch = settle(config.build(preset, overrides=["train.budget=60", "train.batch_size=128"]), ranks, (512, 16, 1))[0]
    assert batch.train.rounds == math.ceil(60 / per_round * 4)
    with pytest.raises(UserError, match=r"^train.rounds = 7 and train.budget = 60 both say how long to train"):
        config.build(preset, overrides=["train.budget=60", "train.rounds=7"])


def test_every_key_has_a_rule_and_every_rule_a_key():
    assert set(config.RULES) == set(config.Config().flat())


def test_a_settled_config_cannot_change_and_replace_makes_a_new_one():
    cfg = settle(config.build(), 2)[0]
    with pytest.raises(AttributeError, match="settled"):
        cfg.train.lr = 1.0
    other = cfg.replace({"output.dir": "elsewhere"})
    assert other.output.dir == "elsewhere" and cfg.output.dir == ""
    with pytest.raises(AttributeError):
        other.output.dir = "again"


def test_auto_takes_the_slower_plan_when_only_it_fits_a_ranks_memory():
    """bernoulli p = 2 at K = 2, n >> d: plan outputs is faster by the cost model but holds every
    subnetwork's activations; with memory for rows alone, auto takes rows and says why."""
    from mpisub.parallel.resources import Node, memory_per_rank
    job = ["masks.kind='bernoulli'", "masks.subnets=2", "masks.keep=0.5", "model.width=16384", "train.local_steps=1",
           "theory.max_n=0"]
    roomy = settle(config.build(overrides=job), 2, (4096, 128, 1), node=Node(1, 0))[0]
    assert roomy.train.plan == "outputs"
    need = {plan: sum(memory_per_rank(roomy, 2, 1, False, plan).values()) for plan in ("rows", "outputs")}
    assert need["rows"] < need["outputs"]
    limit = int((need["rows"] + need["outputs"]) / 2 / 2**20)
    cfg, why = settle(config.build(overrides=job + [f"train.memory_limit_mb={limit}"]), 2, (4096, 128, 1),
                      node=Node(1, 0))
    assert cfg.train.plan == "rows" and why.startswith("auto: outputs would be faster by the model but needs")


def test_a_resume_takes_the_options_the_run_was_started_with(tmp_path):
    """A requeued job passes its submission's options again (config file, --set, auto values as
    given): accepted, compared with the run's config as given; a result key that differs is not."""
    job = tmp_path / "job.toml"
    job.write_text("[train]\nlr = 2.0\n")
    given = config.build(None, str(job), ["train.rounds=7"])
    stored = settle(given, 2)[0].to_dict()
    cfg = config.for_resume(stored, ["train.rounds=9"], given.to_dict(), None, str(job))
    assert (cfg.train.rounds, cfg.train.lr, cfg.masks.subnets) == (9, 2.0, 2)
    assert config.for_resume(stored, ["masks.subnets=0"], given.to_dict()).masks.subnets == 2   # auto as given
    job.write_text("[train]\nlr = 3.0\n")
    with pytest.raises(UserError, match="train.lr = 3.0 here, but the run being resumed has train.lr = 2.0"):
        config.for_resume(stored, ["train.rounds=7"], given.to_dict(), None, str(job))
