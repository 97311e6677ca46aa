"""What defines a Vision Transformer run: the config, the variant table, the sweep family
and the default training recipe. Pure Python (no jax), like scaling/models/config.py.

Three ways to get a config (docs/models.md#vision-transformers):
  get_config("ViT-B/16")                          a named variant ([D21], [Z21], [A23])
  family_config(64, 4, 256, 2, 4, num_classes=10)   the continuous family (width, depth,
                                                    MLP width, heads, patch size)
  get_config("vit-w64-d4-m256-h2-p4")             the same, by its canonical name
`model_name(cfg)` gives the canonical name back, which `get_config` parses. A pooling
other than the variant's default is a suffix: "ViT-B/16-map", "vit-w64-d4-m256-h2-p4-gap".
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

from scaling.errors import BadInput, closest
from scaling.optim_config import TypedRecipe, _p, check_typed_fields

FAMILY = "vit"
# How the token sequence becomes one vector ([D21] class token, [Z21]/[A23] MAP head,
# GAP as big_vision's default): docs/references.md#vision-transformers.
POOLS = ("tok", "gap", "map")
DECAYS = ("cosine", "linear")


@dataclass(frozen=True)
class ViTConfig:
    """A pre-norm ViT with learned position embeddings (docs/models.md#vision-transformers).

    Defaults are ViT-B/16 [D21] (docs/references.md#vision-transformers).
    """

    width: int = 768  # D, the token width
    depth: int = 12  # encoder blocks
    mlp_dim: int = 3072  # M, the MLP's hidden width
    num_heads: int = 12
    patch_size: int = 16  # P: non-overlapping P x P patches
    pool: str = "tok"  # "tok" (class token), "gap" (mean of tokens) or "map" (attention pooling)
    dropout: float = 0.0  # after the embeddings, in the MLP and on each residual branch; big_vision's default
    num_classes: int = 1000
    train_resolution: int = 224  # [D21] / big_vision vit_i1k: 224 px training crops
    test_resolution: int = 224  # big_vision vit_i1k evaluates 224 px central crops

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    def grid(self, resolution: int) -> int:
        """Patches per side at `resolution` (a VALID conv: leftover pixels are dropped)."""
        return resolution // self.patch_size

    def tokens(self, resolution: int) -> int:
        """Sequence length T: the patches, plus the class token when pool is "tok"."""
        return self.grid(resolution) ** 2 + (1 if self.pool == "tok" else 0)

    def with_(self, **overrides) -> "ViTConfig":
        return _replace(self, overrides)


# --- the variant table (data; docs/references.md#vision-transformers) ---------------------
# name: width, depth, MLP, heads, default pooling, source.
VARIANTS: dict[str, dict] = {
    "Ti": dict(width=192, depth=12, mlp_dim=768, num_heads=3, pool="tok", source="[D21]/[Z21] Table 2 (DeiT-Ti shape)"),
    "S": dict(width=384, depth=12, mlp_dim=1536, num_heads=6, pool="tok", source="[D21]/[Z21] Table 2"),
    "B": dict(width=768, depth=12, mlp_dim=3072, num_heads=12, pool="tok", source="[D21] Table 1"),
    "L": dict(width=1024, depth=24, mlp_dim=4096, num_heads=16, pool="tok", source="[D21] Table 1"),
    "H": dict(width=1280, depth=32, mlp_dim=5120, num_heads=16, pool="tok", source="[D21] Table 1"),
    "g": dict(width=1408, depth=40, mlp_dim=6144, num_heads=16, pool="tok", source="[Z21] Table 2"),
    "G": dict(width=1664, depth=48, mlp_dim=8192, num_heads=16, pool="tok", source="[Z21] Table 2"),
    # SoViT-400m [A23]: the shape-optimised ViT, published with a MAP head.
    "So400m": dict(width=1152, depth=27, mlp_dim=4304, num_heads=16, pool="map", source="[A23] (arXiv 2305.13035)"),
}
PATCHES = (16, 14)  # the published patch sizes of the named variants
PRESET_NAMES = tuple(f"ViT-{v}/{p}" for v in VARIANTS for p in PATCHES)

# The continuous family's defaults: the variants' regularisation and resolutions.
FAMILY_POOL = "tok"

_PRESET_RE = re.compile(r"^(?:vit|sovit)-(?P<v>[a-z0-9]+)/(?P<p>[0-9]+)(?:-(?P<pool>[a-z]+))?$", re.I)
_FAMILY_RE = re.compile(
    r"^vit-w(?P<w>[0-9]+)-d(?P<d>[0-9]+)-m(?P<m>[0-9]+)-h(?P<h>[0-9]+)-p(?P<p>[0-9]+)(?:-(?P<pool>[a-z]+))?$", re.I)
_SOVIT_ALIASES = {"400m": "So400m", "so400m": "So400m"}


def owns(name: str) -> bool:
    """Whether `name` is spelt as a ViT name (preset or family), valid or not."""
    key = str(name).strip().lower()
    return key.startswith("vit-") or key.startswith("sovit-")


def _variant_key(text: str, sovit: bool) -> str | None:
    """The VARIANTS key for a spelling: case-insensitive except g (giant) vs G (gigantic)."""
    if sovit:
        return _SOVIT_ALIASES.get(text.lower())
    if text in VARIANTS:
        return text
    if text in ("g", "G"):
        return text
    by_lower = {k.lower(): k for k in VARIANTS if k not in ("g", "G")}
    return by_lower.get(text.lower())


def _pool(text: str | None, default: str, name: str) -> str:
    if text is None:
        return default
    p = text.lower()
    if p not in POOLS:
        raise BadInput(f"model: {name!r} has pooling suffix {text!r}; {closest(p, POOLS)}use -tok, -gap or -map")
    return p


def get_config(name: str, *, num_classes: int = 1000, **overrides) -> ViTConfig:
    """Config for "ViT-<variant>/<patch>[-tok|-gap|-map]" (variants Ti, S, B, L, H, g, G,
    So400m at patch 16 or 14; "SoViT-400m/14" is an alias of "ViT-So400m/14") or a family
    name "vit-w<W>-d<D>-m<M>-h<H>-p<P>[-gap|-map|-tok]"; keyword overrides replace fields."""
    text = str(name).strip()
    if m := _PRESET_RE.match(text):
        sovit = text.lower().startswith("sovit-")
        key = _variant_key(m["v"], sovit)
        patch = int(m["p"])
        if key is not None and patch in PATCHES:
            row = VARIANTS[key]
            cfg = ViTConfig(width=row["width"], depth=row["depth"], mlp_dim=row["mlp_dim"],
                            num_heads=row["num_heads"], patch_size=patch,
                            pool=_pool(m["pool"], row["pool"], text), num_classes=num_classes)
            return _replace(cfg, overrides)
    if m := _FAMILY_RE.match(text):
        return family_config(int(m["w"]), int(m["d"]), int(m["m"]), int(m["h"]), int(m["p"]),
                             num_classes=num_classes, pool=_pool(m["pool"], FAMILY_POOL, text), **overrides)
    raise BadInput(
        f"model: unknown model {name!r}; {closest(text, PRESET_NAMES)}ViT names are "
        f"ViT-<Ti|S|B|L|H|g|G|So400m>/<16|14> (e.g. 'ViT-S/16') or a family name like "
        f"'vit-w64-d4-m256-h2-p4' (width, depth, MLP width, heads, patch size)"
    )


def family_config(width: int, depth: int, mlp_dim: int, num_heads: int, patch_size: int, *,
                  num_classes: int, **overrides) -> ViTConfig:
    """A member of the continuous family along [A23]'s shape dimensions (width, depth, MLP
    width) plus heads and patch size. Any positive integers with width divisible by heads
    give a valid network; tiny members (e.g. width 32, patch 4) run at 16-32 px."""
    for field, value in (("width", width), ("depth", depth), ("mlp_dim", mlp_dim),
                         ("num_heads", num_heads), ("patch_size", patch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadInput(f"{field}: must be a positive whole number, got {value!r}")
    cfg = ViTConfig(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=num_heads,
                    patch_size=patch_size, pool=FAMILY_POOL, num_classes=num_classes)
    return _replace(cfg, overrides)


def family_name(width: int, depth: int, mlp_dim: int, num_heads: int, patch_size: int,
                pool: str = FAMILY_POOL) -> str:
    suffix = "" if pool == FAMILY_POOL else f"-{pool}"
    return f"vit-w{width}-d{depth}-m{mlp_dim}-h{num_heads}-p{patch_size}{suffix}"


# Fields that do not change the architecture's name (regularisation, data).
_NAME_NEUTRAL = {"dropout", "num_classes", "train_resolution", "test_resolution"}


def _arch(cfg: ViTConfig) -> dict:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NAME_NEUTRAL}


def model_name(cfg: ViTConfig) -> str:
    """Canonical name: the preset's ("ViT-B/16", "ViT-So400m/14", "ViT-B/16-map") when the
    shape is a named variant's, else the family name. get_config(model_name(cfg)) rebuilds
    the same architecture; dropout, classes and resolutions are not part of the name."""
    for key, row in VARIANTS.items():
        shape = (row["width"], row["depth"], row["mlp_dim"], row["num_heads"])
        if shape == (cfg.width, cfg.depth, cfg.mlp_dim, cfg.num_heads) and cfg.patch_size in PATCHES:
            suffix = "" if cfg.pool == row["pool"] else f"-{cfg.pool}"
            return f"ViT-{key}/{cfg.patch_size}{suffix}"
    return family_name(cfg.width, cfg.depth, cfg.mlp_dim, cfg.num_heads, cfg.patch_size, cfg.pool)


def shape_of(cfg: ViTConfig) -> dict:
    """The shape coordinates model-info and sweeps report."""
    return {"width": cfg.width, "depth": cfg.depth, "mlp_dim": cfg.mlp_dim,
            "num_heads": cfg.num_heads, "patch_size": cfg.patch_size, "pool": cfg.pool}


def min_resolution(cfg: ViTConfig) -> tuple[int, str]:
    """The smallest input with at least one patch."""
    return cfg.patch_size, f"one {cfg.patch_size}x{cfg.patch_size} patch"


def _replace(cfg: ViTConfig, overrides: dict) -> ViTConfig:
    fields = {f.name for f in dataclasses.fields(ViTConfig)}
    for key in overrides:
        if key not in fields:
            raise BadInput(f"{key}: not a ViTConfig field; {closest(key, fields)}see scaling/models/vit_config.py")
    new = dataclasses.replace(cfg, **overrides)
    validate(new)
    return new


def validate(cfg: ViTConfig) -> None:
    """Raise BadInput naming the first field that cannot build a valid ViT."""
    for field in ("width", "depth", "mlp_dim", "num_heads", "patch_size", "num_classes",
                  "train_resolution", "test_resolution"):
        v = getattr(cfg, field)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise BadInput(f"{field}: must be a positive whole number, got {v!r}")
    if cfg.width % cfg.num_heads:
        raise BadInput(f"num_heads: width {cfg.width} does not split into {cfg.num_heads} heads; "
                       f"pick heads that divide the width (e.g. {max(1, cfg.width // 64)})")
    if cfg.pool not in POOLS:
        raise BadInput(f"pool: {cfg.pool!r} is not one of {', '.join(POOLS)}")
    if not (isinstance(cfg.dropout, (int, float)) and 0 <= cfg.dropout < 1):
        raise BadInput(f"dropout: must be in [0, 1), got {cfg.dropout!r}")


# --- the sweep grid keys (a spec's [grid] / [isoflop] table) ------------------------------
GRID_KEYS = ("vit_widths", "vit_depths", "vit_mlp_dims", "vit_mlp_ratios", "vit_heads",
             "vit_patch_sizes", "vit_pool")


def grid_names(table: dict, where: str) -> list[str]:
    """Family names of the product of a grid table's ViT axes: widths x depths x MLP x heads
    x patch sizes. MLP: `vit_mlp_dims`, or `vit_mlp_ratios` x width (default 4, [D21]);
    heads: `vit_heads` (default width // 64, at least 1: 64-wide heads as in [D21]);
    `vit_pool`: one pooling for all (default tok)."""
    def ints(key: str, default=None) -> list[int]:
        if key not in table:
            if default is None:
                raise BadInput(f"{where}{key}: missing; the ViT grid needs vit_widths, vit_depths and vit_patch_sizes")
            return default
        raw = table[key] if isinstance(table[key], list) else [table[key]]
        if not raw:
            raise BadInput(f"{where}{key}: empty list; give at least one value")
        for v in raw:
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise BadInput(f"{where}{key}: {v!r} is not a positive whole number; e.g. {key} = [32, 64]")
        if len(set(raw)) != len(raw):
            raise BadInput(f"{where}{key}: duplicate entry; list each value once")
        return list(raw)

    if "vit_mlp_dims" in table and "vit_mlp_ratios" in table:
        raise BadInput(f"{where}vit_mlp_ratios: give vit_mlp_dims or vit_mlp_ratios, not both")
    widths, depths, patches = ints("vit_widths"), ints("vit_depths"), ints("vit_patch_sizes")
    heads = ints("vit_heads", [0])
    pool = table.get("vit_pool", FAMILY_POOL)
    if pool not in POOLS:
        raise BadInput(f"{where}vit_pool: {pool!r} is not one of {', '.join(POOLS)}")
    if "vit_mlp_ratios" in table:
        raw = table["vit_mlp_ratios"] if isinstance(table["vit_mlp_ratios"], list) else [table["vit_mlp_ratios"]]
        for r in raw:
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or r <= 0:
                raise BadInput(f"{where}vit_mlp_ratios: {r!r} must be a positive number; e.g. [4]")
        mlp_of = [lambda w, r=r: max(1, int(math.floor(r * w + 0.5))) for r in raw]
    elif "vit_mlp_dims" in table:
        mlp_of = [lambda w, m=m: m for m in ints("vit_mlp_dims")]
    else:
        mlp_of = [lambda w: 4 * w]
    names = []
    for w in widths:
        for d in depths:
            for mlp in mlp_of:
                for h in heads:
                    for p in patches:
                        h_ = h or max(1, w // 64)
                        try:
                            cfg = family_config(w, d, mlp(w), h_, p, num_classes=1, pool=pool)
                        except BadInput as err:
                            raise BadInput(f"{where}{err}") from None
                        names.append(model_name(cfg))
    return names


# --- the default training recipe ------------------------------------------------------------
@dataclass(frozen=True)
class ViTRecipe(TypedRecipe):
    """The ViT training recipe, fixed per compilation (peak LR and run length are runtime
    inputs, as for NFNet). Adam with big_vision's decoupled weight decay and global-norm
    clipping, warmup then cosine (or linear) decay over the run's own length. Sources:
    docs/references.md#vision-transformer-training-recipe.

    The update (big_vision `optax.make`): p <- p - s(t) * (lr * adam(clip(g)) + wd * p)
    on kernels, where s(t) = lr(t) / peak_lr is the schedule's multiplier in [0, 1]: the
    decay follows the schedule but not the peak learning rate, so an LR grid does not
    change how strongly weights decay.
    """

    RECIPE_NAME = " of the ViT recipe"  # in the unknown-key message

    beta1: float = _p(0.9, "float", 0.0, 1.0, hi_open=True)  # optax scale_by_adam default, used by big_vision vit_i1k
    beta2: float = _p(0.999, "float", 0.0, 1.0, hi_open=True)  # same
    eps: float = _p(1e-8, "float", 0.0, None, lo_open=True)  # same
    grad_clip_norm: float = _p(1.0, "float", 0.0, None)  # global norm; big_vision vit_i1k and [Z21]; 0 = off
    # Decoupled, per step x s(t), kernels only: big_vision vit_i1k / vit_i21k wd = 1e-4
    # (with lr 1e-3; [Z21]'s JFT ViT-g uses 0.03 x 8e-4 = 2.4e-5 on the body).
    weight_decay: float = _p(1e-4, "float", 0.0, None)
    # Multiplier of weight_decay on the classifier kernel: 1 (big_vision vit_i1k); [Z21]
    # decays the head 100x harder (train_vit_g: wd_mults head 100).
    head_decay_mult: float = _p(1.0, "float", 0.0, None)
    # Warmup as a fraction of the run's own steps: big_vision vit_i1k warms up 10k of its
    # ~93k steps (300 ImageNet epochs at batch 4096: 11%), rounded to 0.1. A fraction, as for NFNet,
    # keeps the schedule's shape the same across epoch budgets.
    warmup_fraction: float = _p(0.1, "float", 0.0, 1.0, hi_open=True)
    decay: str = dataclasses.field(default="cosine")  # big_vision vit_i1k decay_type; "linear" also
    label_smoothing: float = _p(0.0, "float", 0.0, 1.0, hi_open=True)  # big_vision vit_i1k: none

    def __post_init__(self):
        check_typed_fields(self, "optimizer.")
        if not isinstance(self.decay, str) or self.decay not in DECAYS:
            raise BadInput(f"optimizer.decay: {self.decay!r} is not one of {', '.join(DECAYS)}; "
                           f"e.g. decay = \"cosine\"")

