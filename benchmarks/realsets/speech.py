"""People speaking:

- `spoken-words` (speech ↔ what is said): KTuberling's English words (Debian `ktuberling-data`, a speaker naming each
  object: "umbrella", "pyramid") and Tux Paint's spoken English stamp names, letters and numbers (`tuxpaint.py`).
- `spoken-phrases` (speech ↔ what it expresses, not a transcript): Hedgewars' English voice packs (Debian
  `hedgewars-data`), 9 characters (British, Classic, Default, HillBilly, Mobster, Pirate, Robot, Singer, Surfer)
  acting the same game phrases, each in its own words: the file name names the phrase ("Missed.ogg" → "missed", which
  the British voice says as "It appears your aim is somewhat lacking, sir"), so each phrase is one group of up to 9
  clips. Non-verbal clips (laughs, grunts) are left out.
"""

from __future__ import annotations

import re
from pathlib import Path

from benchmarks.realsets.folder_set import SetBuilder

HEDGEWARS_VOICES = Path("usr/share/games/hedgewars/Data/Sounds/voices")
ENGLISH_VOICES = ("British", "Classic", "Default", "HillBilly", "Mobster", "Pirate", "Robot", "Singer", "Surfer")
HEDGEWARS_PHRASES = {
    "Amazing": "amazing", "Boring": "boring", "Brilliant": "brilliant", "Bugger": "bugger", "Byebye": "bye bye",
    "Comeonthen": "come on then", "Coward": "coward", "Cutitout": "cut it out", "Drat": "drat",
    "Enemydown": "enemy down", "Excellent": "excellent", "Fire": "fire", "Firstblood": "first blood",
    "Flawless": "flawless", "Flyaway": "fly away", "Gonnagetyou": "gonna get you", "Grenade": "grenade",
    "Hello": "hello", "Hurry": "hurry", "Illgetyou": "I'll get you", "Incoming": "incoming",
    "Justyouwait": "just you wait", "Kamikaze": "kamikaze", "Leavemealone": "leave me alone", "Melon": "melon",
    "Missed": "missed", "Nooo": "no", "Nutter": "nutter", "Ohdear": "oh dear", "Oops": "oops", "Ouch": "ouch",
    "Reinforcements": "reinforcements", "Revenge": "revenge", "Runaway": "run away", "Sameteam": "same team",
    "Solong": "so long", "Stupid": "stupid", "Takecover": "take cover", "Thisoneismine": "this one is mine",
    "Traitor": "traitor", "Uh-oh": "uh oh", "Victory": "victory", "Watchit": "watch it", "Watchthis": "watch this",
    "Whatthe": "what the", "Yessir": "yes sir", "Youllregretthat": "you'll regret that",
}
NON_VERBAL = re.compile(r"^(Laugh|Ooff\d|Ow\d|Jump\d|Firepunch\d|Hmm|Poison\w+)$")

KTUBERLING_SOUNDS = Path("usr/share/ktuberling/sounds")
KTUBERLING_WORDS = {  # theme-prefixed or misspelt names -> the word spoken
    "palmtree": "palm tree", "fallingstar": "falling star", "sphynx": "sphinx", "brocolli": "broccoli",
}


def build_hedgewars(root: Path, builder: SetBuilder) -> SetBuilder:
    voices = root / HEDGEWARS_VOICES
    for voice in ENGLISH_VOICES:
        folder = voices / voice
        if not folder.is_dir():
            builder.skip(f"voice pack {voice} missing")
            continue
        for clip in sorted(folder.glob("*.ogg")):
            phrase = HEDGEWARS_PHRASES.get(clip.stem)
            if phrase is None:
                reason = "non-verbal clip" if NON_VERBAL.match(clip.stem) else f"phrase not transcribed: {clip.stem}"
                builder.skip(reason)
                continue
            relative = f"audio/hedgewars/{voice}/{clip.name}"
            builder.add(f"hw-{voice}-{clip.stem}", phrase, audio=(relative, clip))
    return builder


def build_ktuberling(root: Path, builder: SetBuilder) -> SetBuilder:
    theme = root / KTUBERLING_SOUNDS / "en.soundtheme"
    text = theme.read_text(encoding="utf-8")
    for name, file in re.findall(r'<sound\s+name="([^"]+)"\s+file="([^"]+)"', text):
        clip = root / KTUBERLING_SOUNDS / file
        if not clip.is_file():
            builder.skip("ktuberling file missing")
            continue
        word = name.split("_", 1)[1] if "_" in name else name
        word = KTUBERLING_WORDS.get(word, word)
        builder.add(f"kt-{name}", word, audio=(f"audio/ktuberling/{clip.name}", clip))
    return builder
