"""The participants registry: who is on the bus, of which kind, with which bank code.

Declared in a TOML file (``infra/domain/participants.toml`` by default, same format
for production).  Banks may be listed one by one or generated from a
``[banks]`` table (``count``, ``code_start``) — the benchmark uses 1,000.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infra.core.errors import ConfigError

if TYPE_CHECKING:
    from infra.core.settings import Settings

DEFAULT_FILE = Path(__file__).with_name("participants.toml")


class Kind(str, Enum):
    AGENCY = "agency"
    REGISTRY = "registry"
    BANK = "bank"
    PORTAL = "portal"
    DICJ = "dicj"
    HUB = "hub"


@dataclass(frozen=True)
class Participant:
    id: str
    kind: Kind
    name: str
    bank_code: str | None = None
    suspended: bool = False
    participating: bool = True  # banks: part of lookup fan-outs
    name_ja: str | None = None  # the name a person reads on the portal in Japanese (None: ``name``)

    def display_name(self, lang: str) -> str:
        """The name to show a person reading in ``lang`` (``ja`` or ``en``)."""
        return (self.name_ja or self.name) if lang == "ja" else self.name

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["kind"] = self.kind.value
        return out


class Participants:
    """An ordered, validated set of participants with lookups by id, kind and bank code."""

    def __init__(self, items: list[Participant]) -> None:
        self._by_id: dict[str, Participant] = {}
        self._by_code: dict[str, Participant] = {}
        for p in items:
            if p.id in self._by_id:
                raise ConfigError(f"participants: duplicate id {p.id!r}")
            self._by_id[p.id] = p
            if p.kind is Kind.BANK:
                if p.bank_code is None:
                    raise ConfigError(f"participants: bank {p.id!r} needs a bank_code")
                if p.bank_code in self._by_code:
                    raise ConfigError(f"participants: duplicate bank_code for {p.id!r}")
                self._by_code[p.bank_code] = p

    def __iter__(self):
        return iter(self._by_id.values())

    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, pid: object) -> bool:
        return pid in self._by_id

    def get(self, pid: str) -> Participant | None:
        return self._by_id.get(pid)

    def by_bank_code(self, code: str) -> Participant | None:
        return self._by_code.get(code)

    def of_kind(self, kind: Kind) -> list[Participant]:
        return [p for p in self._by_id.values() if p.kind is kind]

    def banks(self, *, participating_only: bool = False) -> list[Participant]:
        return [p for p in self.of_kind(Kind.BANK) if p.participating or not participating_only]


def _validate_id(pid: Any) -> str:
    if not isinstance(pid, str) or not pid or not all(c.isascii() and (c.isalnum() or c in "-_") for c in pid):
        raise ConfigError("participants: id must be ASCII letters, digits, '-' or '_' (it names a topic)")
    return pid


def participants_of(settings: Settings) -> Participants:
    """The participants a deployment runs with: its participants file (or the built-in set) and bank count."""
    return load_participants(settings.participants_file, banks=settings.banks)


def load_participants(path: Path | None = None, *, banks: int | None = None) -> Participants:
    """Load the participants file; ``banks`` overrides the generated bank count."""
    path = path or DEFAULT_FILE
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"participants file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"participants file {path} is not valid TOML: {exc}") from None
    items: list[Participant] = []
    for raw in data.get("participant", []):
        try:
            kind = Kind(raw["kind"])
        except (KeyError, ValueError):
            raise ConfigError(
                f"participants: {raw.get('id')!r} needs kind = one of {', '.join(k.value for k in Kind)}"
            ) from None
        code = raw.get("bank_code")
        if code is not None and not (isinstance(code, str) and len(code) == 4 and code.isdigit()):
            raise ConfigError(f"participants: bank_code of {raw.get('id')!r} must be 4 digits")
        items.append(Participant(
            id=_validate_id(raw.get("id")), kind=kind, name=str(raw.get("name", raw.get("id"))),
            bank_code=code, suspended=bool(raw.get("suspended", False)),
            participating=bool(raw.get("participating", True)),
            name_ja=str(raw["name_ja"]) if raw.get("name_ja") else None,
        ))
    generated = data.get("banks", {})
    count = banks if banks is not None else int(generated.get("count", 0))
    start = int(generated.get("code_start", 9000))
    if count and start + count - 1 > 9999:
        raise ConfigError("participants: generated bank codes would exceed 9999; lower code_start")
    for n in range(count):
        code = f"{start + n:04d}"
        items.append(Participant(id=f"bank-{code}", kind=Kind.BANK, name=f"Demo Bank {code}", bank_code=code,
                                 name_ja=f"デモ銀行 {code}"))
    return Participants(items)
