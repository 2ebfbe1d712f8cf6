"""Body parts: six fixed classes, MediaPipe SelfieMulticlass-compatible, and the mapping from the
Clothing Co-Parsing (ccp) label maps to them.

    index  name         colour (part map PNG)   ccp labels
    0      background   black                   null
    1      hair         brown                   hair
    2      face-skin    light orange            skin above the collar line (see `split_face`)
    3      body-skin    dark orange             the other skin
    4      clothes      blue                    garments and shoes (CLOTHES)
    5      accessories  green                   ACCESSORIES

ccp has one `skin` label for face, neck, arms and legs. `split_face` calls face-skin the skin above the
collar line: the highest row of the upper-body garments (or, with none, a sixth down the person). In
ccp's upright full-body photos that is the face and neck; it is wrong for hands raised above the collar,
for bare shoulders (strapless tops start lower) and for people lying down. The part-IoU target counts
face- and body-skin together as ccp's `skin` for that reason.
Torch-free (numpy and OpenCV), so the light install can colour a part map.
"""
from __future__ import annotations

import numpy as np

PART_NAMES = ("background", "hair", "face-skin", "body-skin", "clothes", "accessories")
PALETTE = np.array([(0, 0, 0), (120, 70, 30), (255, 200, 150), (200, 110, 40), (40, 90, 220), (60, 180, 75)],
                   np.uint8)
CLOTHES = ("blazer", "blouse", "bodysuit", "bra", "cape", "cardigan", "coat", "dress", "hoodie", "intimate",
           "jacket", "jeans", "jumper", "leggings", "panties", "pants", "romper", "shirt", "shorts", "skirt",
           "socks", "stockings", "suit", "sweater", "sweatshirt", "swimwear", "t-shirt", "tights", "top", "vest",
           "boots", "clogs", "flats", "heels", "loafers", "pumps", "sandals", "shoes", "sneakers", "wedges")
ACCESSORIES = ("accessories", "bag", "belt", "bracelet", "earrings", "glasses", "gloves", "hat", "necklace",
               "purse", "ring", "scarf", "sunglasses", "tie", "wallet", "watch")
# garments whose top edge is the collar line (the upper body's)
UPPER_BODY = ("blazer", "blouse", "bodysuit", "bra", "cape", "cardigan", "coat", "dress", "hoodie", "jacket",
              "jumper", "romper", "shirt", "suit", "sweater", "sweatshirt", "swimwear", "t-shirt", "top", "vest")
HAIR, FACE_SKIN, BODY_SKIN, CLOTHES_ID, ACCESSORIES_ID = 1, 2, 3, 4, 5
IGNORE = 255  # a part-label value that counts in no loss (no part labels there, padding)


def ccp_lookup(label_names: list[str]) -> np.ndarray:
    """A 256-entry table from ccp label ids (`label_names[i]` is id i) to part classes, skin as body-skin
    (`split_face` moves the face's). Every ccp name must be assigned exactly once."""
    assigned = {"null": 0, "hair": HAIR, "skin": BODY_SKIN}
    assigned.update({n: CLOTHES_ID for n in CLOTHES})
    assigned.update({n: ACCESSORIES_ID for n in ACCESSORIES})
    missing = [n for n in label_names if n not in assigned]
    if missing:
        raise ValueError(f"ccp labels with no part class: {', '.join(missing)}")
    lut = np.zeros(256, np.uint8)
    for i, name in enumerate(label_names):
        lut[i] = assigned[name]
    return lut


def collar_row(labels: np.ndarray, label_names: list[str]) -> int:
    """The highest image row of an upper-body garment; without one, a sixth down the person's height."""
    upper = np.isin(labels, [i for i, n in enumerate(label_names) if n in UPPER_BODY])
    rows = np.flatnonzero(upper.any(1))
    if len(rows):
        return int(rows[0])
    person = np.flatnonzero((labels != 0).any(1))
    return int(person[0] + (person[-1] - person[0]) / 6) if len(person) else 0


def split_face(parts: np.ndarray, collar: int) -> np.ndarray:
    """Body-skin above row `collar` becomes face-skin (the face and neck of an upright person)."""
    out = parts.copy()
    top = out[:collar]
    top[top == BODY_SKIN] = FACE_SKIN
    return out


def ccp_parts(labels: np.ndarray, label_names: list[str]) -> np.ndarray:
    """(H, W) ccp label ids -> (H, W) uint8 part classes (PART_NAMES)."""
    return split_face(ccp_lookup(label_names)[labels], collar_row(labels, label_names))


def colorize(parts: np.ndarray) -> np.ndarray:
    """(H, W) part classes -> (H, W, 3) uint8 RGB with PALETTE (the colour-coded part map)."""
    return PALETTE[np.clip(parts, 0, len(PALETTE) - 1)]


def legend() -> str:
    """One line per class: index, name, colour (for --help and the README)."""
    return "\n".join(f"{i} {name} rgb{tuple(int(c) for c in PALETTE[i])}" for i, name in enumerate(PART_NAMES))
