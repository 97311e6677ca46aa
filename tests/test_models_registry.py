"""The family registry: every family complete, names and counts through one door, NFNet
unchanged, recipes per family, and sweeps that mix families (store, LR extension)."""
from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest

from scaling.errors import BadInput
from scaling.models import registry
from scaling.models.config import family_config
from scaling.models.counts import count as nfnet_count
from scaling.optim_config import OptimConfig
from scaling.train.config import TrainConfig
from sweeps.spec import expand, load_spec, parse_spec

REPO = Path(__file__).resolve().parents[1]


def test_every_family_is_complete():
    assert list(registry.FAMILIES)[:2] == ["nfnet", "vit"] and {"effnetv2", "g16", "coatnet"} <= set(registry.FAMILIES)
    for fam in registry.FAMILIES.values():
        assert dataclasses.is_dataclass(fam.config_type) and fam.presets
        assert all("source" in row for row in fam.variants.values()), fam.name
        assert fam.references.startswith("docs/references.md#")
        recipe = fam.recipe.from_dict({})
        assert recipe.label_smoothing == 0.0 and recipe.warmup_steps(100) >= 0
        cfg = fam.get_config(fam.presets[0], num_classes=10)
        c = fam.count(cfg, 224)
        assert c.params > 0 and c.flops == 2 * c.macs and c.train_flops == 3 * c.flops
        assert fam.grid_keys and fam.summary(cfg)
        assert fam.member(num_classes=10, **fam.shape(cfg)) == fam.get_config(fam.model_name(fam.member(
            num_classes=10, **fam.shape(cfg))), num_classes=10)
        # the jax side, named by strings, imports and has the contract's parts
        assert callable(fam.load("module")) and callable(fam.load("init")) and callable(fam.load("make_recipe"))


@pytest.mark.parametrize("family", list(registry.FAMILIES))
def test_canonical_names_round_trip_for_every_family(family):
    fam = registry.family(family)
    for name in [*fam.presets, fam.example]:
        cfg = registry.get_config(name, num_classes=10)
        assert registry.family_of(name) is fam and registry.family_of(cfg) is fam
        canonical = registry.model_name(cfg)
        assert registry.get_config(canonical, num_classes=10) == cfg
        assert registry.canonical_name(name) == canonical and registry.family_name(canonical) == family


def test_nfnet_through_the_registry_is_unchanged():
    f0 = registry.get_config("F0")
    c = registry.count(f0, 256)
    assert (c.params, c.macs) == (71_489_284, 12_384_198_656)  # [B21] Table 3 (tests/test_models_counts.py)
    assert c == nfnet_count(f0, 256)
    assert registry.model_name(family_config(0.5, 0.125, num_classes=10)) == "nfnet-d0.5-w0.125"
    assert registry.canonical_name("f3+") == "F3+"
    assert registry.family("nfnet").recipe is OptimConfig
    assert registry.run_family(None).name == "nfnet"  # a run by depth/width multipliers


@pytest.mark.parametrize("name, message", [
    ("F9", r"^model: unknown model 'F9'"),
    ("FO", r"^model: unknown model 'FO'; did you mean 'F0'\?"),
    ("resnet50", r"^model: unknown model 'resnet50'.*'vit-w64-d4-m256-h2-p4'"),
])
def test_unknown_models_name_every_family(name, message):
    with pytest.raises(BadInput, match=message):
        registry.get_config(name)


def test_recipe_tables_are_validated_against_the_models_family():
    vit = dict(model="ViT-S/16", epochs=1.0, lr=1e-3)
    TrainConfig(**vit, optimizer={"beta2": 0.95, "grad_clip_norm": 0.5}).validate()
    with pytest.raises(BadInput, match=r"^optimizer\.agc_clip: unknown field of the ViT recipe"):
        TrainConfig(**vit, optimizer={"agc_clip": 0.01}).validate()
    with pytest.raises(BadInput, match=r"^optimizer\.beta2: unknown field; known: momentum"):
        TrainConfig(model="F0", epochs=1.0, optimizer={"beta2": 0.95}).validate()
    TrainConfig(depth_mult=0.5, width_mult=0.5, epochs=1.0, optimizer={"agc_clip": 0.04}).validate()


# ---------------------------------------------------------------- sweeps across families

BASE = {"name": "mix", "dataset": "procedural:classes=10,train_size=256", "num_classes": 10, "batch_size": 8,
        "resolution": 16, "train_examples": 256}


def test_a_grid_may_mix_families():
    spec = parse_spec({**BASE, "grid": {"models": ["ViT-S/16", "F0"], "depth_mults": [0.25], "width_mults": [0.0625],
                                        "vit_widths": [32], "vit_depths": [2], "vit_patch_sizes": [4],
                                        "epochs": [1], "lr": [0.1]}})
    trials = expand(spec)
    got = {t.config["model"]: (t.family, t.depth_mult) for t in trials}
    assert got == {"ViT-S/16": ("vit", None), "F0": ("nfnet", 1.0), "nfnet-d0.25-w0.0625": ("nfnet", 0.25),
                   "vit-w32-d2-m128-h1-p4": ("vit", None)}
    assert {t.params for t in trials if t.config["model"] == "ViT-S/16"} == \
        {registry.count(registry.get_config("ViT-S/16", num_classes=10), 16).params}


def _groups(nfnet_extra: dict | None = None) -> dict:
    nf = {"depth_mults": [0.25], "width_mults": [0.03125, 0.0625], "epochs": [1, 2], "lr": {"centre": 0.4, "steps": 1},
          "recipe": {"optimizer": {"agc_clip": 0.04}}, **(nfnet_extra or {})}
    vit = {"models": ["vit-w32-d2-m64-h2-p4"], "vit_widths": [48], "vit_depths": [2], "vit_patch_sizes": [4],
           "epochs": [0.5, 1], "lr": [0.001, 0.002], "recipe": {"optimizer": {"weight_decay": 0.0}}}
    return {**BASE, "recipe": {"eval_points": 0}, "grid": [nf, vit]}


def test_a_grid_per_family_with_its_own_lr_grid_and_recipe():
    spec = parse_spec(_groups())
    trials = expand(spec)
    by_family = {f: [t for t in trials if t.family == f] for f in ("nfnet", "vit")}
    assert len(by_family["nfnet"]) == 2 * 2 * 3 and len(by_family["vit"]) == 2 * 2 * 2
    assert {t.config["lr"] for t in by_family["vit"]} == {0.001, 0.002}
    assert all(t.config["optimizer"] == {"agc_clip": 0.04} and t.config["eval_points"] == 0 for t in by_family["nfnet"])
    assert all(t.config["optimizer"] == {"weight_decay": 0.0} for t in by_family["vit"])
    # The NFNet group's trials are those of an NFNet-only spec: adding a family changes no id.
    alone = {**BASE, "recipe": {"eval_points": 0, "optimizer": {"agc_clip": 0.04}},
             "grid": {k: v for k, v in _groups()["grid"][0].items() if k != "recipe"}}
    assert sorted(t.trial_id for t in expand(parse_spec(alone))) == sorted(t.trial_id for t in by_family["nfnet"])
    assert spec.lrs == (0.001, 0.002, 0.2, 0.4, 0.8) and spec.mode == "grid"


@pytest.mark.parametrize("change, message", [
    ({"recipe": {"optimizer": {"beta1": 0.9}}}, r"^recipe\.optimizer\.beta1: unknown field"),
    ({"recipe": {"lr": 0.1}}, r"^grid\[0\]\.recipe\.lr: set by the grid"),
    ({"epocs": [1]}, r"^grid\[0\]\.epocs: unknown key; did you mean 'epochs'\?"),
    ({"vit_widths": [30], "vit_depths": [1], "vit_patch_sizes": [4], "vit_heads": [4]},
     r"^grid\[0\]\.num_heads: width 30 does not split into 4 heads"),
])
def test_group_mistakes_name_the_group(change, message):
    with pytest.raises(BadInput, match=message):
        expand(parse_spec(_groups(change)))


def test_isoflop_works_per_family():
    spec = parse_spec({**BASE, "isoflop": [
        {"depth_mults": [0.25], "width_mults": [0.0625], "budgets": [1e10, 3e10], "lr": [0.4]},
        {"models": ["vit-w32-d2-m64-h2-p4"], "budgets": [2e10], "lr": [0.002]}]})
    trials = expand(spec)
    assert spec.mode == "isoflop" and len(trials) == 3
    spent = {}
    for t in trials:
        info = registry.count(registry.get_config(t.config["model"], num_classes=10), 16)
        spent.setdefault(t.family, []).append(round(t.config["epochs"] * 256 * info.train_flops / 1e10, 4))
    assert spent == {"nfnet": [1.0, 3.0], "vit": [2.0]}  # each model spends its group's budgets


def test_the_compare_spec_has_two_families_each_three_sizes_epochs_and_lrs():
    trials = expand(load_spec("compare"))
    for fam in ("nfnet", "vit"):
        mine = [t for t in trials if t.family == fam]
        assert len({t.config["model"] for t in mine}) >= 3
        assert len({t.config["epochs"] for t in mine}) >= 3 and len({t.config["lr"] for t in mine}) >= 3


def test_the_store_and_lr_extension_carry_the_family(tmp_path):
    from sweeps.lr_extension import extend_sweep
    from sweeps.runner import enqueue_spec
    from sweeps.store import Store

    spec = parse_spec({**_groups(), "lr_extension": {"max_steps": 1}})
    store = Store(f"sqlite:///{tmp_path / 'runs.db'}")
    enqueue_spec(spec, store)
    rows = store.rows("mix")
    assert {(r["model"].split("-")[0], r["family"]) for r in rows} == {("nfnet", "nfnet"), ("vit", "vit")}
    assert all(r["depth_mult"] is None for r in rows if r["family"] == "vit")
    # finish every trial with the best loss at the highest lr: each group asks for 2x that lr
    with store._begin() as conn:
        from sweeps.schema import trials as table

        for r in rows:
            conn.execute(table.update().where(table.c.trial_id == r["trial_id"]).values(
                status="done", heldout_loss=1.0 / r["lr"]))
    assert extend_sweep(store, "mix") > 0
    new = [r for r in store.rows("mix") if r["reason"].startswith("lr-extension")]
    assert {r["family"] for r in new} == {"nfnet", "vit"}
    assert all(r["depth_mult"] is None for r in new if r["family"] == "vit")
    assert all(r["depth_mult"] == 0.25 for r in new if r["family"] == "nfnet")
    store.dispose()


def test_a_worker_result_fills_the_family(tmp_path):
    from sweeps.spec import Trial
    from sweeps.store import Store

    store = Store(f"sqlite:///{tmp_path / 'runs.db'}")
    cfg = dict(model="vit-w32-d2-m64-h2-p4", dataset="procedural", batch_size=8, resolution=16, epochs=1.0, lr=0.001)
    store.enqueue([Trial("s", cfg, family=None, depth_mult=None, width_mult=None)])
    assert store.rows("s")[0]["family"] == "vit"  # read from the name at enqueue
    with store._begin() as conn:
        from sweeps.schema import trials as table

        conn.execute(table.update().values(family=None))  # as a row of an older program
    claim = store.claim("w", lease_seconds=60)
    assert store.complete(claim, "done", {"heldout_loss": 2.0, "family": "vit", "params": 5})
    assert store.rows("s")[0]["family"] == "vit"
    store.dispose()


def test_nothing_outside_the_registry_names_the_vit_modules():
    """Adding a family touches the registry and the family's own files: no other module
    imports a ViT module or names the family's parts."""
    own = {"scaling/models/registry.py", "scaling/models/vit.py", "scaling/models/vit_config.py",
           "scaling/models/vit_counts.py"}
    for pkg in ("scaling", "sweeps", "study"):  # (analysis: see its own tests)
        for path in (REPO / pkg).rglob("*.py"):
            rel = path.relative_to(REPO).as_posix()
            if rel in own:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                assert not any(n.startswith("scaling.models.vit") for n in names), (rel, names)
            assert "ViTRecipe(" not in path.read_text() and "ViTConfig(" not in path.read_text(), rel


def test_result_json_of_an_older_run_still_loads():
    from scaling.train.loop import TrainResult

    fields = [f.name for f in dataclasses.fields(TrainResult) if f.name != "family"]
    old = {k: 0 for k in fields}
    assert TrainResult.from_dict(old).family == "nfnet"
    assert json.loads(json.dumps(TrainResult.from_dict({**old, "family": "vit"}).to_dict()))["family"] == "vit"
