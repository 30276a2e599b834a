"""Where config values come from: TOML files (a config file, a sweep file), `--set section.key=value`
assignments, and the "did you mean" for a key that is not one. Plain Python."""
import difflib
import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from mpisub._util.errors import UserError, cause

# names users bring from other tools, and the key that means the same here
SYNONYMS = {"learning_rate": "train.lr", "step_size": "train.lr", "eta": "train.lr", "epochs": "train.rounds",
            "iterations": "train.rounds", "tau": "train.local_steps", "steps": "train.local_steps",
            "hidden": "model.width", "m": "model.width", "neurons": "model.width", "p": "masks.subnets",
            "workers": "masks.subnets", "dropout": "masks.keep", "xi": "masks.keep", "kappa": "model.init_scale"}


def suggest_key(key: str, known: list[str]) -> str | None:
    """The known key a mistyped one most likely means: a synonym, else the closest spelling of the
    whole key or of its name within a section."""
    name = key.split(".")[-1].lower()
    if name in SYNONYMS:
        return SYNONYMS[name]
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
    if close:
        return close[0]
    by_name = {k.split(".")[1]: k for k in known}
    close = difflib.get_close_matches(name, list(by_name), n=1, cutoff=0.75)
    return by_name[close[0]] if close else None


def parse_assignment(text: str) -> tuple[str, object]:
    """'train.lr=0.5' -> ('train.lr', 0.5). The value is read as TOML, else taken as a string."""
    if "=" not in text:
        raise UserError(f"--set {text!r}: expected section.key=value, e.g. --set train.lr=0.5")
    key, raw = (s.strip() for s in text.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def read_toml(path: str, what: str = "config file") -> dict:
    """A TOML file as parsed; every way it can fail is one UserError naming it as `what`."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"{what} {path!r} not found; check the path") from None
    except IsADirectoryError:
        raise UserError(f"{what} {path!r} is a folder; give the path of a TOML file") from None
    except OSError as e:
        raise UserError(f"{what} {path!r} cannot be read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{what} {path!r} is not valid TOML: {cause(e)}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{what} {path!r} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
                        f"{e.start}); save it as UTF-8") from None
    except Exception as e:  # noqa: BLE001 (a user's file: whatever the parser raises is one line)
        raise UserError(f"{what} {path!r} cannot be read as TOML ({type(e).__name__}: {cause(e)}); "
                        f"check the file") from None
    return doc


def load_toml(path: str) -> dict[str, object]:
    """A config file as {section.key: value}."""
    doc = read_toml(path)
    flat = {}
    for section, values in doc.items():
        if not isinstance(values, dict):
            raise UserError(f"config file {path!r}: {section!r} must be a [section] table, e.g. [train]")
        for key, value in values.items():
            flat[f"{section}.{key}"] = value
    return flat


def line_of(file: str, key: str) -> str:
    """', line N' where `key` (section.name) is set in a TOML file, or '' where it cannot be told."""
    section, name = key.rsplit(".", 1) if "." in key else ("", key)
    current = ""
    try:
        with open(file, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                text = line.strip()
                if text.startswith("[") and text.endswith("]"):
                    current = text.strip("[] ")
                elif current == section and text.split("=", 1)[0].strip() == name:
                    return f", line {number}"
    except (OSError, UnicodeDecodeError):
        pass
    return ""

