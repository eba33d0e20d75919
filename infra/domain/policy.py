"""The default-deny policy (アクセス制御): may this sender send this message to this recipient?

A message is allowed only when a rule in ``infra/domain/policy.toml`` matches its
(sender, recipient, message type, data item, legal basis). Anything else is
refused with a :class:`~infra.core.errors.PolicyDenied` carrying a stable reason:

- ``UNKNOWN_PARTICIPANT`` — sender or recipient is not registered;
- ``SUSPENDED`` — sender or recipient is suspended (checked before the rules);
- ``UNAUTHORISED`` — no rule matches;
- ``UNKNOWN_PROCEDURE`` / ``PROCEDURE_NOT_ALLOWED`` — the matching rule says
  ``procedure = true`` (STEP2) and the message names no catalogued
  public-benefit procedure, or one its agency is not entitled to
  (:mod:`infra.domain.procedures`); a message whose rule takes no procedure and
  names one anyway is refused ``PROCEDURE_NOT_ALLOWED``.

A rule names its sender and recipient as a participant id, ``kind:<kind>`` or
``*`` (any participant). The most specific match wins (id, then kind, then
``*``). A rule also says whether the message produces a provision record
(情報提供等記録), whether that record is withheld from the person (不開示), and
which side of the record the sender is (requester or provider), and whether
the message must name the public-benefit procedure it serves — checked
against the record's requester (the agency), whichever way the message goes.

The hub calls :meth:`Policy.authorise` for every message: rules are indexed by
their full key at load time, so a decision is at most nine dict look-ups (plus
two for suspension, which follows the key directory: :meth:`Policy.follow`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from infra.core.config_files import entry_label, read_toml
from infra.core.errors import ConfigError, PolicyDenied, Reason
from infra.domain.participants import Kind, Participant
from infra.domain.procedures import Procedure, Procedures
from schemas.types import MESSAGE_TYPES

DEFAULT_FILE = Path(__file__).with_name("policy.toml")

# --- Legal bases (根拠法令). ASCII so they are safe in headers, logs and topic tools.
# 口座登録法 = 公的給付の支給等の迅速かつ確実な実施のための預貯金口座の登録等に関する法律 (令和3年法律第38号)
BASIS_REGISTRATION: Final = "account-registration-act/art3"  # 登録 via the portal (§3)
BASIS_ALONGSIDE_PROCEDURE: Final = "account-registration-act/art4"  # 行政機関による登録受付, with another procedure (§4)
BASIS_CHANGE: Final = "account-registration-act/art6"  # 変更・抹消 (§6)
BASIS_BANK_INTAKE: Final = "account-registration-act/art8"  # 金融機関経由の登録 (§8)
BASIS_PROVISION: Final = "account-registration-act/art9"  # 行政機関等への提供 (§9)
# 口座管理法 = 預貯金者の意思に基づく個人番号の利用による預貯金口座の管理等に関する法律 (令和3年法律第39号)
BASIS_NUMBERING: Final = "deposit-account-management-act/art3"  # 付番申出 (§3)
BASIS_INHERITANCE_LOOKUP: Final = "deposit-account-management-act/inheritance-lookup"  # 相続時照会
BASIS_DISASTER_LOOKUP: Final = "deposit-account-management-act/disaster-lookup"  # 災害時照会
# 番号法 §21-2: obtaining the token (情報提供用個人識別符号).
BASIS_TOKEN_ISSUANCE: Final = "my-number-act/art21-2"
# The network's own operation (rejection notices): no personal data item is exchanged.
BASIS_NETWORK_OPERATION: Final = "renkei/network-operation"

BASES: Final = frozenset({
    BASIS_REGISTRATION, BASIS_ALONGSIDE_PROCEDURE, BASIS_CHANGE, BASIS_BANK_INTAKE, BASIS_PROVISION, BASIS_NUMBERING,
    BASIS_INHERITANCE_LOOKUP, BASIS_DISASTER_LOOKUP, BASIS_TOKEN_ISSUANCE, BASIS_NETWORK_OPERATION,
})

# --- Data items (特定個人情報の項目).
DATA_PUBLIC_FUNDS_ACCOUNT: Final = "public_funds_account"  # 公金受取口座情報
DATA_DEPOSIT_ACCOUNT_NUMBERING: Final = "deposit_account_numbering"  # 預貯金口座への付番
DATA_DEPOSIT_ACCOUNT_HOLDINGS: Final = "deposit_account_holdings"  # which banks hold accounts
DATA_PERSON_TOKEN: Final = "person_token"  # 符号
DATA_NONE: Final = "none"  # the message carries no personal data item (rejection notices)
DATA_PERSON_NOTICE: Final = "person_notice"  # お知らせ: what the platform did about the person, told to them

DATA_ITEMS: Final = frozenset({
    DATA_PUBLIC_FUNDS_ACCOUNT, DATA_DEPOSIT_ACCOUNT_NUMBERING, DATA_DEPOSIT_ACCOUNT_HOLDINGS,
    DATA_PERSON_TOKEN, DATA_NONE, DATA_PERSON_NOTICE,
})

ANY: Final = "*"
KIND_PREFIX: Final = "kind:"
_KIND_SPEC: Final = {k: KIND_PREFIX + k.value for k in Kind}

SenderRole = Literal["requester", "provider"]


@dataclass(frozen=True, slots=True)
class Rule:
    """One allowed combination, as declared in the policy file."""

    id: str
    sender: str  # participant id, "kind:<kind>" or "*"
    recipient: str
    type: str
    data_item: str
    bases: tuple[str, ...]
    records: bool
    not_disclosed: bool = False
    sender_role: SenderRole = "requester"
    procedure: bool = False  # the message must name a catalogued procedure its requester is entitled to


@dataclass(frozen=True, slots=True)
class PolicyDecision:
    """What an allowed message entails: which rule allowed it and what to record."""

    rule_id: str
    records: bool  # the message produces a provision record
    not_disclosed: bool  # that record is withheld from the person (不開示)
    sender_role: SenderRole = "requester"  # the sender is the record's requester or provider
    procedure: Procedure | None = None  # the public-benefit procedure the message serves (rules with procedure)


class Policy:
    """Default-deny rules, the catalogue of procedures and the live suspension list. Build with :meth:`load`."""

    def __init__(self, rules: Iterable[Rule], procedures: Procedures | None = None) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        self.procedures = procedures if procedures is not None else Procedures.load()
        self._index: dict[tuple[str, str, str, str, str], PolicyDecision] = {}
        self._needs_procedure: set[str] = set()  # rule ids
        # (rule id, requester id, procedure code) -> PolicyDecision: the catalogue does not change while loaded
        self._entitled: dict[tuple[str, str, str | None], PolicyDecision] = {}
        ids: set[str] = set()
        for rule in self.rules:
            _check_rule(rule)
            if rule.id in ids:
                raise ConfigError(f"policy: duplicate rule id {rule.id!r}")
            ids.add(rule.id)
            decision = PolicyDecision(rule.id, rule.records, rule.not_disclosed, rule.sender_role)
            if rule.procedure:
                self._needs_procedure.add(rule.id)
            for basis in rule.bases:
                key = (rule.type, rule.sender, rule.recipient, rule.data_item, basis)
                other = self._index.get(key)
                if other is not None:
                    raise ConfigError(f"policy: rules {other.rule_id!r} and {rule.id!r} overlap")
                self._index[key] = decision
        # pid -> suspended, set in this process (suspend/resume); overrides everything else.
        self._suspension: dict[str, bool] = {}
        # pid -> suspended, as published on the keys topic (follow); overrides the participants file.
        self._published: Mapping[str, bool] = {}

    @classmethod
    def load(cls, path: Path | None = None, *, procedures: Path | None = None) -> Policy:
        """Load the rules file (``infra/domain/policy.toml`` beside this module by default) and the procedures catalogue
        (``infra/domain/procedures.toml`` by default)."""
        data = read_toml(path or DEFAULT_FILE, "policy file")
        return cls((_parse_rule(raw) for raw in data.get("rule", [])), Procedures.load(procedures))

    # --- suspension (immediate, no reload) ---------------------------------
    #
    # Whether a participant is suspended: this process's own suspend()/resume() if any, else the
    # latest root-signed participant status on the keys topic (`renkei participants
    # suspend|resume`, followed through `follow`), else the participants file.

    def suspend(self, pid: str) -> None:
        """Refuse everything from or to ``pid`` from now on, in this process."""
        self._suspension[pid] = True

    def resume(self, pid: str) -> None:
        """Lift a suspension in this process (also one declared in the participants file)."""
        self._suspension[pid] = False

    def follow(self, directory: Any) -> None:
        """Take suspensions from the key directory (``infra.crypto.keys.KeyDirectory.suspensions``), live:
        a participant status published on the keys topic applies to the next message.

        The policy then refuses a suspended participant itself, after its signature has been
        verified (so the sender can be sent a signed SUSPENDED notice): the directory stops
        refusing suspended participants' signatures in this process.
        """
        self._published = directory.suspensions
        directory.refuse_suspended_signers = False

    def is_suspended(self, participant: Participant) -> bool:
        local = self._suspension.get(participant.id)
        if local is not None:
            return local
        return self._published.get(participant.id, participant.suspended)

    # --- the decision -------------------------------------------------------

    def authorise(
        self,
        sender: Participant | None,
        recipient: Participant | None,
        type: str,  # noqa: A002 - the envelope's field name
        data_item: str,
        basis: str,
        procedure: str | None = None,
    ) -> PolicyDecision:
        """The :class:`PolicyDecision` for this message, or :class:`PolicyDenied`.

        ``procedure`` is the code of the public-benefit procedure the envelope's signed metadata
        names (None: none).
        """
        if sender is None:
            raise PolicyDenied(Reason.UNKNOWN_PARTICIPANT, "sender is not a registered participant")
        if recipient is None:
            raise PolicyDenied(Reason.UNKNOWN_PARTICIPANT, "recipient is not a registered participant")
        if self.is_suspended(sender):
            raise PolicyDenied(Reason.SUSPENDED, f"sender {sender.id} is suspended")
        if self.is_suspended(recipient):
            raise PolicyDenied(Reason.SUSPENDED, f"recipient {recipient.id} is suspended")
        index = self._index
        for s in (sender.id, _KIND_SPEC[sender.kind], ANY):
            for r in (recipient.id, _KIND_SPEC[recipient.kind], ANY):
                decision = index.get((type, s, r, data_item, basis))
                if decision is not None:
                    if decision.rule_id in self._needs_procedure:
                        requester = sender if decision.sender_role == "requester" else recipient
                        key = (decision.rule_id, requester.id, procedure)
                        entitled = self._entitled.get(key)
                        if entitled is None:  # refusals raise here and are never cached
                            entitled = _with(decision, self.procedures.check(procedure, requester))
                            if len(self._entitled) < _ENTITLED_CACHED:
                                self._entitled[key] = entitled
                        return entitled
                    if procedure is not None:
                        raise PolicyDenied(Reason.PROCEDURE_NOT_ALLOWED,
                                           f"{type} under rule {decision.rule_id} names no procedure; "
                                           "this message may not carry one")
                    return decision
        # Name the combination (ids, type, item, basis are metadata, never personal data).
        raise PolicyDenied(
            Reason.UNAUTHORISED,
            f"no rule allows {type} from {sender.id} to {recipient.id} "
            f"for data item {data_item!r} under basis {basis!r}",
        )


_ENTITLED_CACHED = 65_536


def _with(decision: PolicyDecision, procedure: Procedure) -> PolicyDecision:
    return PolicyDecision(decision.rule_id, decision.records, decision.not_disclosed, decision.sender_role, procedure)


# --- loading -----------------------------------------------------------------

_RULE_KEYS = {"id", "sender", "recipient", "type", "data_item", "bases", "records",
              "not_disclosed", "sender_role", "procedure"}


def _parse_rule(raw: Any) -> Rule:
    label = entry_label(raw, file="policy", table="rule", label="policy rule", name="id", allowed=_RULE_KEYS)
    for key in ("id", "sender", "recipient", "type", "data_item"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise ConfigError(f"{label}: {key} must be a non-empty string")
    bases = raw.get("bases")
    if not isinstance(bases, list) or not bases or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(f"{label}: bases must be a non-empty list of strings")
    if not isinstance(raw.get("records"), bool):
        raise ConfigError(f"{label}: records must be true or false (no default: decide per rule)")
    not_disclosed = raw.get("not_disclosed", False)
    if not isinstance(not_disclosed, bool):
        raise ConfigError(f"{label}: not_disclosed must be true or false")
    role = raw.get("sender_role", "requester")
    if role not in ("requester", "provider"):
        raise ConfigError(f"{label}: sender_role must be 'requester' or 'provider'")
    procedure = raw.get("procedure", False)
    if not isinstance(procedure, bool):
        raise ConfigError(f"{label}: procedure must be true or false")
    return Rule(
        id=raw["id"], sender=raw["sender"], recipient=raw["recipient"], type=raw["type"],
        data_item=raw["data_item"], bases=tuple(bases), records=raw["records"],
        not_disclosed=not_disclosed, sender_role=role, procedure=procedure,
    )


def _check_rule(rule: Rule) -> None:
    label = f"policy rule {rule.id!r}"
    if rule.type not in MESSAGE_TYPES:
        raise ConfigError(f"{label}: unknown message type {rule.type!r}")
    for name in ("sender", "recipient"):
        spec = getattr(rule, name)
        if spec == ANY:
            continue
        if spec.startswith(KIND_PREFIX):
            if spec not in _KIND_SPEC.values():
                kinds = ", ".join(_KIND_SPEC.values())
                raise ConfigError(f"{label}: {name} {spec!r} is not one of {kinds}")
        elif not all(c.isascii() and (c.isalnum() or c in "-_") for c in spec):
            raise ConfigError(f"{label}: {name} must be a participant id, kind:<kind> or *")
    if len(set(rule.bases)) != len(rule.bases):
        raise ConfigError(f"{label}: bases lists a basis twice")
