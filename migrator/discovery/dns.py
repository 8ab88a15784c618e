"""DNS preflight for a cutover: MX (hosts and TTL), SPF and autodiscover of every migrated domain, with advice.

``check_domain`` / ``check_domains`` read the records through one configurable resolver (``ResolverConfig``; no
nameservers = the system resolver from /etc/resolv.conf) and turn them into ``Finding`` lines — ok, warn or
error, each one line that says what to do.  Nothing is changed anywhere; the only I/O is DNS queries.

Advice rules, and why:

* **No MX** (NODATA) → error.  Without MX, senders fall back to the domain's address record (RFC 5321 5.1) or
  bounce; a domain whose mailboxes are migrated must have MX records, and the cutover is the moment they are
  switched.  A null MX (``0 .``, RFC 7505) says the domain takes no mail at all → error too.  A domain that does
  not exist (NXDOMAIN) → error, and nothing else is checked for it.
* **MX TTL above 3600 s** → warn "lower the MX TTL to 300 s at least <TTL> before the cutover so the switch
  propagates fast".  Resolvers that cached the old MX keep sending to the old host until their copy expires, so
  after the switch mail arrives at the source for up to one TTL; and a lowered TTL only takes effect once the old,
  long one has expired everywhere, hence "at least <old TTL> before".  An hour of split delivery is what a
  planned window normally absorbs (delta passes pick that mail up); a day is not.  Caveat: a caching resolver
  reports the *remaining* TTL of its copy, which can be lower than the published one; point ``ResolverConfig``
  at the domain's authoritative server for the exact value.
* **Where MX points**: every host ends with one of ``target_mx_suffixes`` → ok "MX already points at the
  target" (the cutover is done, or the domain was never on the source).  Some do, some do not → warn: mail is
  split between source and target by preference and availability.  None → an ok line naming the hosts, so
  the report shows where mail goes today.  Suffixes match whole labels (``outlook.com`` matches
  ``x.mail.protection.outlook.com``, not ``xoutlook.com``).
* **SPF** (TXT records starting ``v=spf1``; strings of one record are concatenated, RFC 7208 3.3):
  none → warn, receivers cannot tell forged mail from yours and the target's outbound mail gets no SPF pass;
  more than one → error, RFC 7208 4.5 makes that a permerror, so *every* message from the domain fails SPF
  today; a record without ``include:<x>`` (no qualifier or ``+``) for each of ``target_spf_includes`` → warn
  "add include:<x> before cutover or mail sent from the target will fail SPF".  Only the domain's own record
  is read: an include reached through ``redirect=`` or a nested include is not followed and gets the warning
  (check it by hand).  With several records the include check is skipped: the permerror must be fixed first.
* **Autodiscover**: CNAME ``autodiscover.<domain>`` first, then SRV ``_autodiscover._tcp.<domain>`` (the
  record with the lowest priority, then the highest weight, is reported as "SRV host:port").  Neither → warn:
  Outlook and phones find a mailbox's server through it and will keep using the old server's settings, or
  fail, after the cutover.
* **Lookups that fail** (timeout, SERVFAIL, REFUSED) → an error finding naming the domain, the record and the
  resolver; never an exception, so one broken domain does not hide the others.  When the MX lookup itself
  fails, the domain gets that one finding and its other lookups are skipped (they would fail the same way,
  each costing a timeout).  Except: if the resolver has
  not answered a single query yet and the first one gets no reply at all (timeout, or no server reachable),
  ``Unreachable`` is raised, naming the resolver: a dead resolver would otherwise turn every domain into
  identical errors.  A reply of any kind (even REFUSED) proves the resolver is there.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
import dns.rrset

from migrator.errors import Unreachable, UserError

__all__ = [
    "MX_TTL_WARN",
    "RECOMMENDED_MX_TTL",
    "DomainDns",
    "Finding",
    "ResolverConfig",
    "check_domain",
    "check_domains",
]

MX_TTL_WARN = 3600
"""MX TTLs above this (seconds) get a warning."""
RECOMMENDED_MX_TTL = 300
"""The MX TTL to set ahead of a cutover (seconds)."""

Level = Literal["ok", "warn", "error"]
_MxList = tuple[tuple[int, str], ...]


@dataclass(frozen=True)
class ResolverConfig:
    """Which resolver to ask: ``nameservers`` (IP addresses; empty = the system resolver), ``port``, and
    ``timeout``: seconds for one lookup, every server and retry included.  Bad values raise UserError."""

    nameservers: tuple[str, ...] = ()
    port: int = 53
    timeout: float = 5.0

    def __post_init__(self) -> None:
        for ns in self.nameservers:
            try:
                ipaddress.ip_address(ns)
            except ValueError:
                raise UserError(f"DNS resolver {ns!r} is not an IP address") from None
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise UserError(f"DNS resolver port must be 1-65535, not {self.port!r}")
        if not self.timeout > 0:
            raise UserError(f"DNS timeout must be a positive number of seconds, not {self.timeout!r}")


@dataclass(frozen=True)
class Finding:
    """One line of advice: ``ok`` (fine, for the record), ``warn`` (fix before the cutover), ``error`` (broken)."""

    level: Level
    message: str


@dataclass(frozen=True)
class DomainDns:
    """What DNS says about one domain.

    ``mx``: (preference, host) sorted, hosts lower-case without the final dot (a null MX is ``(0, ".")``);
    ``mx_ttl``: TTL of the MX answer (None without MX); ``spf``: the SPF record (the first, when there are
    several); ``autodiscover``: the CNAME target of ``autodiscover.<domain>``, or ``"SRV host:port"``;
    ``findings``: the advice, MX first, then SPF, then autodiscover.
    """

    domain: str
    mx: _MxList
    mx_ttl: int | None
    spf: str | None
    autodiscover: str | None
    findings: tuple[Finding, ...]

    @property
    def level(self) -> Level:
        """The worst finding's level (``ok`` when there are none)."""
        levels = {f.level for f in self.findings}
        return "error" if "error" in levels else "warn" if "warn" in levels else "ok"


def check_domain(
    domain: str,
    resolver: ResolverConfig,
    *,
    target_mx_suffixes: Sequence[str] = (),
    target_spf_includes: Sequence[str] = (),
) -> DomainDns:
    """Look up and judge the MX, SPF and autodiscover records of ``domain`` (see the module notes).

    Failed lookups become error findings.  Raises Unreachable when the resolver does not answer the first
    query at all, UserError when the system resolver is asked for but not configured.
    """
    return _Checker(resolver, target_mx_suffixes, target_spf_includes).check(domain)


def check_domains(
    domains: Iterable[str],
    resolver: ResolverConfig,
    *,
    target_mx_suffixes: Sequence[str] = (),
    target_spf_includes: Sequence[str] = (),
) -> list[DomainDns]:
    """``check_domain`` for each distinct domain (case and a final dot ignored), in the order given.

    Raises Unreachable only when the resolver does not answer the very first query; once it has answered, a
    later timeout is an error finding of that domain.
    """
    checker = _Checker(resolver, target_mx_suffixes, target_spf_includes)
    results: dict[str, DomainDns] = {}
    for domain in domains:  # lazily: the caller may stream domains from the inventory
        key = _normalise(domain)
        if key not in results:
            results[key] = checker.check(key)
    return list(results.values())


# --------------------------------------------------------------------------------------------------
# lookups


@dataclass(frozen=True)
class _Answer:
    rrset: dns.rrset.RRset | None = None  # None: no such record (NODATA) or name (NXDOMAIN), or a failure
    nxdomain: bool = False
    problem: str | None = None  # the lookup failed: timeout, SERVFAIL, REFUSED ...


class _Lookup:
    """One resolver plus whether it has ever replied (which decides between Unreachable and a finding)."""

    def __init__(self, config: ResolverConfig) -> None:
        self.config = config
        try:
            self.resolver = dns.resolver.Resolver(configure=not config.nameservers)
        except dns.resolver.NoResolverConfiguration as exc:
            raise UserError(f"no system DNS resolver is configured ({exc}); give the resolver's address") from None
        if config.nameservers:
            self.resolver.nameservers = list(config.nameservers)
        self.resolver.port = config.port
        # lifetime bounds the whole lookup; each server gets its share, so a dead first server leaves time for the next
        self.resolver.timeout = config.timeout / max(1, len(self.resolver.nameservers))
        self.resolver.lifetime = config.timeout
        servers = ", ".join(_hostport(str(ns), config.port) for ns in self.resolver.nameservers)
        self.where = servers if config.nameservers else f"system resolver {servers}"
        self.replied = False

    def query(self, name: str, rdtype: str) -> _Answer:
        try:
            qname = dns.name.from_text(name)
            answer = self.resolver.resolve(qname, rdtype, raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN:
            self.replied = True
            return _Answer(nxdomain=True)
        except dns.resolver.NoNameservers as exc:
            rcodes = [str(e[3]) for e in exc.kwargs.get("errors", ()) if len(e) > 4 and e[4] is not None]
            if rcodes:
                self.replied = True
                return _Answer(problem=f"resolver {self.where} answered {'/'.join(sorted(set(rcodes)))}")
            return self._no_reply(name, rdtype, "no server could be reached")
        except dns.exception.Timeout:
            return self._no_reply(name, rdtype, f"no reply within {self.config.timeout:g} s")
        except dns.exception.DNSException as exc:
            return _Answer(problem=f"{_one_line(exc)} (resolver {self.where})")
        self.replied = True
        return _Answer(rrset=answer.rrset)

    def _no_reply(self, name: str, rdtype: str, why: str) -> _Answer:
        if not self.replied:
            raise Unreachable(f"DNS resolver {self.where} does not answer: {why} to {rdtype} {name}")
        return _Answer(problem=f"resolver {self.where} gave {why}")


# --------------------------------------------------------------------------------------------------
# checks


class _Checker:
    def __init__(self, config: ResolverConfig, mx_suffixes: Sequence[str], spf_includes: Sequence[str]) -> None:
        self.lookup = _Lookup(config)
        self.mx_suffixes = tuple(s for s in (_normalise(x) for x in mx_suffixes) if s)
        self.spf_includes = tuple(s for s in (_normalise(x) for x in spf_includes) if s)

    def check(self, domain: str) -> DomainDns:
        domain = _normalise(domain)
        try:
            dns.name.from_text(domain)
            valid = bool(domain)
        except dns.exception.DNSException:
            valid = False
        if not valid:
            finding = Finding("error", f"{domain or '(empty)'}: not a valid domain name; fix the address in the input")
            return DomainDns(domain, (), None, None, None, (finding,))

        findings: list[Finding] = []
        answer = self.lookup.query(domain, "MX")
        if answer.nxdomain:
            findings.append(
                Finding(
                    "error",
                    f"{domain}: domain does not exist (NXDOMAIN from {self.lookup.where}); check the "
                    "spelling or register it before migrating its mailboxes",
                )
            )
            return DomainDns(domain, (), None, None, None, tuple(findings))
        if answer.problem:
            findings.append(
                Finding(
                    "error",
                    f"{domain}: MX lookup failed: {answer.problem}; SPF and autodiscover not checked — "
                    "fix the resolver or the zone and re-run",
                )
            )
            return DomainDns(domain, (), None, None, None, tuple(findings))
        mx, mx_ttl = self._mx(domain, answer, findings)
        spf = self._spf(domain, findings)
        autodiscover = self._autodiscover(domain, findings)
        return DomainDns(domain, mx, mx_ttl, spf, autodiscover, tuple(findings))

    # ---------------------------------------------------------------------------------- MX

    def _mx(self, domain: str, answer: _Answer, findings: list[Finding]) -> tuple[_MxList, int | None]:
        if answer.rrset is None or len(answer.rrset) == 0:
            findings.append(
                Finding("error", f"{domain}: no MX record; publish MX records for the domain before the cutover")
            )
            return (), None
        mx = tuple(sorted((int(rd.preference), _host(rd.exchange)) for rd in answer.rrset))
        ttl = int(answer.rrset.ttl)
        if any(host == "." for _, host in mx):
            findings.append(
                Finding(
                    "error",
                    f"{domain}: null MX (RFC 7505) — the domain refuses all mail; replace it with the "
                    "real mail servers before the cutover",
                )
            )
            return mx, ttl
        if ttl > MX_TTL_WARN:
            findings.append(
                Finding(
                    "warn",
                    f"{domain}: MX TTL is {_duration(ttl)}; lower the MX TTL to {RECOMMENDED_MX_TTL} s "
                    f"at least {_duration(ttl)} before the cutover so the switch propagates fast",
                )
            )
        else:
            findings.append(Finding("ok", f"{domain}: MX TTL {_duration(ttl)} is short enough for a fast cutover"))
        listing = ", ".join(f"{host} ({pref})" for pref, host in mx)
        on_target = [host for _, host in mx if self._is_target_mx(host)]
        if on_target and len(on_target) == len(mx):
            findings.append(Finding("ok", f"{domain}: MX already points at the target: {listing}"))
        elif on_target:
            elsewhere = ", ".join(host for _, host in mx if host not in on_target)
            findings.append(
                Finding(
                    "warn",
                    f"{domain}: MX is split: {', '.join(on_target)} on the target but {elsewhere} not; "
                    "mail lands on both sides — point every MX at the target at cutover",
                )
            )
        else:
            findings.append(Finding("ok", f"{domain}: MX points at {listing}"))
        return mx, ttl

    def _is_target_mx(self, host: str) -> bool:
        return any(host == s or host.endswith("." + s) for s in self.mx_suffixes)

    # ---------------------------------------------------------------------------------- SPF

    def _spf(self, domain: str, findings: list[Finding]) -> str | None:
        answer = self.lookup.query(domain, "TXT")
        if answer.problem:
            findings.append(Finding("error", f"{domain}: TXT (SPF) lookup failed: {answer.problem}"))
            return None
        records = []
        for rd in answer.rrset or ():
            text = b"".join(rd.strings).decode("utf-8", "replace")
            if text[:6].lower() == "v=spf1" and (len(text) == 6 or text[6] == " "):
                records.append(text)
        records.sort()
        if not records:
            example = " ".join(f"include:{inc}" for inc in self.spf_includes) or "..."
            findings.append(
                Finding(
                    "warn",
                    f"{domain}: no SPF record; publish one (v=spf1 {example} -all) before the cutover so "
                    "receivers can tell the target's mail from forgeries",
                )
            )
            return None
        if len(records) > 1:
            findings.append(
                Finding(
                    "error",
                    f"{domain}: {len(records)} SPF records — a permerror (RFC 7208 4.5), so all its "
                    "mail fails SPF today; merge them into one record",
                )
            )
            return records[0]
        mechanisms = {_spf_include(term) for term in records[0].split()[1:]}
        missing = [inc for inc in self.spf_includes if inc not in mechanisms]
        for inc in missing:
            findings.append(
                Finding(
                    "warn",
                    f"{domain}: SPF lacks include:{inc}; add include:{inc} before cutover or mail sent "
                    "from the target will fail SPF",
                )
            )
        if not missing and self.spf_includes:
            included = " ".join(f"include:{inc}" for inc in self.spf_includes)
            findings.append(Finding("ok", f"{domain}: SPF authorizes the target ({included}): {records[0]}"))
        elif not missing:
            findings.append(Finding("ok", f"{domain}: SPF record: {records[0]}"))
        return records[0]

    # ---------------------------------------------------------------------------------- autodiscover

    def _autodiscover(self, domain: str, findings: list[Finding]) -> str | None:
        cname_name = f"autodiscover.{domain}"
        srv_name = f"_autodiscover._tcp.{domain}"
        cname = self.lookup.query(cname_name, "CNAME")
        if cname.rrset is not None and len(cname.rrset) > 0:
            target = _host(next(iter(cname.rrset)).target)
            findings.append(Finding("ok", f"{domain}: autodiscover via CNAME {cname_name} -> {target}"))
            return target
        srv = self.lookup.query(srv_name, "SRV")
        if srv.rrset is not None and len(srv.rrset) > 0:
            best = min(srv.rrset, key=lambda rd: (rd.priority, -rd.weight, _host(rd.target)))
            value = f"SRV {_host(best.target)}:{best.port}"
            findings.append(Finding("ok", f"{domain}: autodiscover via {value} ({srv_name})"))
            return value
        problems = [(n, a.problem) for n, a in ((cname_name, cname), (srv_name, srv)) if a.problem]
        for name, problem in problems:
            findings.append(Finding("error", f"{domain}: autodiscover lookup of {name} failed: {problem}"))
        if not problems:
            findings.append(
                Finding(
                    "warn",
                    f"{domain}: no autodiscover record (CNAME {cname_name} or SRV {srv_name}); "
                    "publish one pointing at the target at cutover or clients will not find their mailbox",
                )
            )
        return None


# --------------------------------------------------------------------------------------------------
# helpers


def _normalise(name: str) -> str:
    return name.strip().rstrip(".").lower()


def _host(name: dns.name.Name) -> str:
    return "." if name == dns.name.root else name.to_text(omit_final_dot=True).lower()


def _hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _spf_include(term: str) -> str | None:
    """The domain of an ``include:`` mechanism that passes (no qualifier or ``+``), else None."""
    term = term.lower()
    if term.startswith("+"):
        term = term[1:]
    return _normalise(term[len("include:") :]) if term.startswith("include:") else None


def _duration(seconds: int) -> str:
    if seconds >= 86400 and seconds % 3600 == 0:
        return f"{seconds} s ({seconds // 3600} h)"
    if seconds >= 3600:
        return f"{seconds} s ({seconds / 3600:.3g} h)"
    if seconds >= 60:
        return f"{seconds} s ({seconds / 60:.3g} min)"
    return f"{seconds} s"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
