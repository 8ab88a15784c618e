"""DNS preflight against real dnsmasq servers on 127.0.0.1 serving test zones (see migrator.lab.dnsmasq).

dnsmasq has one TTL per server, so the zones live on two servers: ``low`` (TTL 300) serves most domains,
``high`` (TTL 86400) the domain whose MX TTL is too long for a fast cutover.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import dns.resolver
import pytest

from migrator.discovery.dns import DomainDns, Finding, ResolverConfig, check_domain, check_domains
from migrator.errors import Unreachable, UserError
from migrator.lab.dnsmasq import DnsServer, free_dns_port

TARGET_MX = ("mail.protection.target.test",)
TARGET_SPF = ("spf.target.test",)
GOOD_SPF = "v=spf1 mx include:spf.target.test -all"

LOW_MX = [
    ("healthy.test", "mx1.healthy.test", 10),
    ("healthy.test", "mx2.healthy.test", 20),
    ("twospf.test", "mx.twospf.test", 10),
    ("moved.test", "moved-test.mail.protection.target.test", 0),
    ("srv.test", "mx.srv.test", 10),
    ("split.test", "split-test.mail.protection.target.test", 0),
    ("split.test", "mx.split.test", 10),
    ("nospfinc.test", "mx.nospfinc.test", 10),
    ("nullmx.test", ".", 0),
]
LOW_TXT = [
    ("healthy.test", GOOD_SPF),
    ("healthy.test", "google-site-verification=abc"),  # not SPF: ignored
    ("nomx.test", GOOD_SPF),
    ("twospf.test", "v=spf1 include:spf.target.test -all"),
    ("twospf.test", "v=spf1 ip4:192.0.2.0/24 ~all"),
    ("moved.test", GOOD_SPF),
    ("srv.test", GOOD_SPF),
    ("split.test", GOOD_SPF),
    ("nospfinc.test", "v=spf1 mx ~include:spf.target.test -all"),  # softfail qualifier does not authorize
]
LOW_CNAME = [
    ("autodiscover.healthy.test", "autodiscover.target.test"),
    ("autodiscover.twospf.test", "autodiscover.target.test"),
    ("autodiscover.moved.test", "autodiscover.target.test"),
    ("autodiscover.split.test", "autodiscover.target.test"),
    ("autodiscover.nospfinc.test", "autodiscover.target.test"),
]
LOW_SRV = [
    ("_autodiscover._tcp.srv.test", "backup.srv.test", 443, 10, 0),
    ("_autodiscover._tcp.srv.test", "mail.srv.test", 443, 0, 10),
    ("_autodiscover._tcp.srv.test", "other.srv.test", 8443, 0, 5),
]


@dataclass(frozen=True)
class Lab:
    low: ResolverConfig
    high: ResolverConfig


@pytest.fixture(scope="session")
def dns_lab() -> Iterator[Lab]:
    low_server = DnsServer(mx=LOW_MX, txt=LOW_TXT, cname=LOW_CNAME, srv=LOW_SRV, ttl=300)
    high_server = DnsServer(
        mx=[("slow.test", "mx.slow.test", 10)],
        txt=[("slow.test", GOOD_SPF)],
        cname=[("autodiscover.slow.test", "autodiscover.target.test")],
        ttl=86400,
    )
    with low_server as low, high_server as high:
        yield Lab(
            low=ResolverConfig(nameservers=(low.host,), port=low.port, timeout=2.0),
            high=ResolverConfig(nameservers=(high.host,), port=high.port, timeout=2.0),
        )


def check(domain: str, resolver: ResolverConfig) -> DomainDns:
    return check_domain(domain, resolver, target_mx_suffixes=TARGET_MX, target_spf_includes=TARGET_SPF)


def by_level(result: DomainDns, level: str) -> list[str]:
    return [f.message for f in result.findings if f.level == level]


def assert_one_line(findings: tuple[Finding, ...]) -> None:
    for f in findings:
        assert f.message and "\n" not in f.message, f


# --------------------------------------------------------------------------------------------------
# advice rules


def test_healthy_domain_is_all_ok(dns_lab: Lab) -> None:
    r = check("healthy.test", dns_lab.low)
    assert r.domain == "healthy.test"
    assert r.mx == ((10, "mx1.healthy.test"), (20, "mx2.healthy.test"))
    assert r.mx_ttl == 300
    assert r.spf == GOOD_SPF
    assert r.autodiscover == "autodiscover.target.test"
    assert {f.level for f in r.findings} == {"ok"}, r.findings
    assert r.level == "ok"
    oks = " | ".join(by_level(r, "ok"))
    assert "MX points at mx1.healthy.test (10), mx2.healthy.test (20)" in oks
    assert f"SPF authorizes the target (include:spf.target.test): {GOOD_SPF}" in oks
    assert "autodiscover via CNAME autodiscover.healthy.test -> autodiscover.target.test" in oks
    assert_one_line(r.findings)


def test_high_mx_ttl_warns_to_lower_it_a_ttl_ahead(dns_lab: Lab) -> None:
    r = check("slow.test", dns_lab.high)
    assert r.mx_ttl == 86400
    assert r.mx == ((10, "mx.slow.test"),)
    warns = by_level(r, "warn")
    assert len(warns) == 1, r.findings
    assert (
        "lower the MX TTL to 300 s at least 86400 s (24 h) before the cutover so the switch propagates fast"
        in (warns[0])
    )
    assert warns[0].startswith("slow.test: ")
    assert not by_level(r, "error")


def test_no_mx_is_an_error(dns_lab: Lab) -> None:
    r = check("nomx.test", dns_lab.low)
    assert r.mx == () and r.mx_ttl is None
    errors = by_level(r, "error")
    assert errors == ["nomx.test: no MX record; publish MX records for the domain before the cutover"]
    assert r.spf == GOOD_SPF  # the other checks still ran
    assert any("no autodiscover record" in w for w in by_level(r, "warn"))
    assert r.level == "error"


def test_two_spf_records_are_a_permerror(dns_lab: Lab) -> None:
    r = check("twospf.test", dns_lab.low)
    errors = by_level(r, "error")
    assert len(errors) == 1 and "2 SPF records" in errors[0] and "permerror" in errors[0], r.findings
    assert r.spf in {"v=spf1 include:spf.target.test -all", "v=spf1 ip4:192.0.2.0/24 ~all"}
    assert not any("include:" in w for w in by_level(r, "warn"))  # include check skipped until merged


def test_mx_already_on_target(dns_lab: Lab) -> None:
    r = check("moved.test", dns_lab.low)
    assert r.mx == ((0, "moved-test.mail.protection.target.test"),)
    assert "moved.test: MX already points at the target: moved-test.mail.protection.target.test (0)" in by_level(
        r, "ok"
    ), r.findings
    assert r.level == "ok"


def test_mx_split_between_source_and_target_warns(dns_lab: Lab) -> None:
    r = check("split.test", dns_lab.low)
    warns = by_level(r, "warn")
    assert len(warns) == 1 and "MX is split" in warns[0] and "mx.split.test" in warns[0], r.findings


def test_target_suffix_matches_whole_labels(dns_lab: Lab) -> None:
    r = check_domain("moved.test", dns_lab.low, target_mx_suffixes=["protection.target.test", "get.test"])
    assert any("MX already points at the target" in m for m in by_level(r, "ok"))
    r = check_domain("moved.test", dns_lab.low, target_mx_suffixes=["et.test"])
    assert not any("already points" in m for m in by_level(r, "ok"))


def test_srv_autodiscover_instead_of_cname(dns_lab: Lab) -> None:
    r = check("srv.test", dns_lab.low)
    assert r.autodiscover == "SRV mail.srv.test:443"  # lowest priority, then highest weight
    assert any("autodiscover via SRV mail.srv.test:443" in m for m in by_level(r, "ok")), r.findings
    assert r.level == "ok"


def test_spf_without_target_include_warns(dns_lab: Lab) -> None:
    r = check("nospfinc.test", dns_lab.low)
    warns = by_level(r, "warn")
    assert warns == [
        "nospfinc.test: SPF lacks include:spf.target.test; add include:spf.target.test before cutover or mail "
        "sent from the target will fail SPF"
    ], r.findings
    # without target includes configured, the same record is fine
    plain = check_domain("nospfinc.test", dns_lab.low)
    assert not by_level(plain, "warn") and not by_level(plain, "error")


def test_null_mx_is_an_error(dns_lab: Lab) -> None:
    r = check("nullmx.test", dns_lab.low)
    assert r.mx == ((0, "."),)
    assert any("null MX" in e for e in by_level(r, "error")), r.findings
    assert any(
        w.startswith("nullmx.test: no SPF record; publish one (v=spf1 include:spf.target.test -all)")
        for w in by_level(r, "warn")
    ), r.findings


# --------------------------------------------------------------------------------------------------
# failures become findings, a dead resolver an exception


def test_nxdomain_is_an_error_finding_naming_domain_and_resolver(dns_lab: Lab) -> None:
    r = check("nosuch.healthy.test", dns_lab.low)
    (finding,) = r.findings
    assert finding.level == "error"
    assert "nosuch.healthy.test" in finding.message and "NXDOMAIN" in finding.message
    assert f"127.0.0.1:{dns_lab.low.port}" in finding.message


def test_refused_is_an_error_finding(dns_lab: Lab) -> None:
    r = check("elsewhere.test", dns_lab.low)  # outside the lab's local domains: dnsmasq answers REFUSED
    (finding,) = r.findings
    assert finding.level == "error"
    assert "elsewhere.test" in finding.message and "REFUSED" in finding.message
    assert f"127.0.0.1:{dns_lab.low.port}" in finding.message


def test_invalid_domain_name_is_an_error_finding(dns_lab: Lab) -> None:
    r = check("bad..name", dns_lab.low)
    assert [f.level for f in r.findings] == ["error"] and "not a valid domain name" in r.findings[0].message


def test_check_domains_dedupes_and_keeps_order(dns_lab: Lab) -> None:
    results = check_domains(
        ["moved.test", "Healthy.TEST", "healthy.test.", "nomx.test"],
        dns_lab.low,
        target_mx_suffixes=TARGET_MX,
        target_spf_includes=TARGET_SPF,
    )
    assert [r.domain for r in results] == ["moved.test", "healthy.test", "nomx.test"]
    assert [r.level for r in results] == ["ok", "ok", "error"]


def test_unreachable_resolver_raises_quickly() -> None:
    config = ResolverConfig(nameservers=("127.0.0.1",), port=free_dns_port(), timeout=0.3)
    started = time.monotonic()
    with pytest.raises(Unreachable) as info:
        check_domain("healthy.test", config)
    assert time.monotonic() - started < 2
    message = str(info.value)
    assert f"127.0.0.1:{config.port}" in message and "\n" not in message
    with pytest.raises(Unreachable):
        check_domains(["healthy.test", "moved.test"], config)


def test_resolver_going_silent_later_is_a_finding_not_an_exception() -> None:
    with DnsServer(mx=[("a.test", "mx.a.test", 10)], txt=[("a.test", GOOD_SPF)]) as server:
        config = ResolverConfig(nameservers=(server.host,), port=server.port, timeout=0.3)

        def domains() -> Iterator[str]:
            yield "a.test"
            server.stop()  # nothing listens any more: queries go unanswered
            yield "b.test"

        first, second = check_domains(domains(), config)
    assert first.mx == ((10, "mx.a.test"),)
    (finding,) = second.findings
    assert finding.level == "error"
    assert "b.test" in finding.message and f"127.0.0.1:{config.port}" in finding.message
    assert "no reply within 0.3 s" in finding.message


def test_resolver_config_rejects_bad_values() -> None:
    with pytest.raises(UserError, match="not an IP address"):
        ResolverConfig(nameservers=("dns.example",))
    with pytest.raises(UserError):
        ResolverConfig(port=0)
    with pytest.raises(UserError):
        ResolverConfig(timeout=0)


# --------------------------------------------------------------------------------------------------
# the lab itself


def test_lab_ttl_txt_quoting_and_clean_stop() -> None:
    odd = 'v=spf1 a, "quoted" \\ ' + "x" * 300  # commas, quotes, backslash, longer than one 255-byte string
    with DnsServer(txt=[("q.test", odd)], mx=[("q.test", "mx.q.test", 5)], ttl=1234) as server:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [server.host]
        resolver.port = server.port
        mx = resolver.resolve("q.test.", "MX")
        assert mx.rrset is not None and mx.rrset.ttl == 1234  # --local-ttl sets the TTL of --mx-host answers
        (txt,) = resolver.resolve("q.test.", "TXT")
        assert b"".join(txt.strings).decode() == odd
        assert all(len(s) <= 255 for s in txt.strings)
        with pytest.raises(dns.resolver.NXDOMAIN):
            resolver.resolve("nothing.q.test.", "MX")
        pid = server.pid
        assert pid is not None
    assert not server.running
    assert not os.path.exists(f"/proc/{pid}")  # stopped and reaped
