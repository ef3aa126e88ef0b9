"""Which BiSeNetV1 layout a state_dict holds, so that loading the wrong one fails with a sentence
instead of a list of 200 keys.

Three facts identify a checkpoint: the fusion module (CoinCheung/BiSeNet's layout since July 2021
has `ffm.conv` + `ffm.bn`; the 2020 one a two-layer MLP `ffm.conv1`/`ffm.conv2` and PixelShuffle
heads), the spatial path (`sp.conv1.*`: original, `sp.stage1.*`: DASP) and the classifier's shape
(number of classes, aux heads or not).
"""
from dataclasses import dataclass

CURRENT = "current"  # CoinCheung/BiSeNet since commit c0422a1 (2021-07), and this package
OLD_2020 = "2020"  # CoinCheung/BiSeNet up to commit 12cd095 (2020-09)
FUSION = {
    CURRENT: "the current CoinCheung/BiSeNet layout (fusion attention ffm.conv + ffm.bn, "
             "bilinear-upsampling heads)",
    OLD_2020: "the 2020 CoinCheung/BiSeNet layout (fusion attention MLP ffm.conv1/ffm.conv2, "
              "PixelShuffle heads), which this package does not implement",
}
HEAD = "conv_out.conv_out.weight"
OLD_2020_HINT = ("; the 2020 weights cannot be converted (their fusion attention differs): use a "
                 "checkpoint of the current code, e.g. CoinCheung's model_final_v1_city_new.pth")


@dataclass(frozen=True)
class Layout:
    fusion: str | None  # CURRENT, OLD_2020, or None when no fusion-module key is there
    spatial_path: str | None  # "original", "dasp", or None when no sp.* key is there
    num_classes: int | None
    aux: bool

    def facts(self):
        """What this layout says, in words, fact by fact (None where unknown)."""
        return {
            "fusion": FUSION.get(self.fusion),
            "spatial_path": None if self.spatial_path is None else f"spatial_path={self.spatial_path!r}",
            "num_classes": None if self.num_classes is None else f"{self.num_classes} classes",
            "aux": None if self.fusion is None else ("aux heads" if self.aux else "no aux heads"),
        }

    def describe(self):
        return ", ".join(v for v in self.facts().values() if v) or "no BiSeNetV1 weights"


def read_layout(state):
    """The Layout of a BiSeNetV1 state_dict (keys without DDP's 'module.' prefix)."""
    if "ffm.conv.weight" in state:
        fusion = CURRENT
    elif "ffm.conv1.weight" in state:
        fusion = OLD_2020
    else:
        fusion = None
    if any(k.startswith("sp.stage1.") for k in state):
        sp = "dasp"
    elif any(k.startswith("sp.conv1.") for k in state):
        sp = "original"
    else:
        sp = None
    num_classes = None
    if HEAD in state:
        rows = state[HEAD].shape[0]
        num_classes = rows // 64 if fusion == OLD_2020 else rows  # PixelShuffle(8) in 2020
    aux = any(k.startswith("conv_out16.") for k in state)
    return Layout(fusion, sp, num_classes, aux)


def model_layout(model):
    """The Layout a BiSeNetV1 instance expects."""
    return Layout(CURRENT, model.spatial_path, model.num_classes, hasattr(model, "conv_out16"))


def check_layout(found, expected, source="this state_dict"):
    """Raises RuntimeError naming the layout found and what was expected instead, when they clash.
    Facts missing from `found` (no sp.* keys, say) are left to load_state_dict."""
    want = expected.facts()
    clash = [want[k] for k, v in found.facts().items() if v is not None and v != want[k]]
    if clash:
        hint = OLD_2020_HINT if found.fusion == OLD_2020 else ""
        raise RuntimeError(f"{source} holds {found.describe()}; expected {', '.join(clash)}{hint}")
