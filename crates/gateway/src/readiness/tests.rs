//! Every readiness check made to pass and made to fail, on a fake host (files in a temp dir, fake
//! `nft`/`docker`/`podman` scripts on a private PATH) and with certificates generated here.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkcs12::Pkcs12;
use openssl::pkey::{PKey, Private};
use openssl::stack::Stack;
use openssl::x509::extension::{BasicConstraints, SubjectAlternativeName};
use openssl::x509::{X509Extension, X509NameBuilder, X509};
use tempfile::TempDir;

use super::*;

const DAY: i64 = 86400;

fn key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

/// What to put in a generated certificate.
struct Spec<'a> {
    cn: &'a str,
    /// `DNS:x` or `IP:x` entries; empty means no SAN extension.
    san: &'a [&'a str],
    /// Days from now (may be negative).
    not_before: i64,
    not_after: i64,
    ca: bool,
    ocsp: Option<&'a str>,
    crl: Option<&'a str>,
}

impl Default for Spec<'_> {
    fn default() -> Self {
        Self {
            cn: "vpn.contoso.com",
            san: &["DNS:vpn.contoso.com"],
            not_before: -1,
            not_after: 365,
            ca: false,
            ocsp: None,
            crl: None,
        }
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A certificate for `key`, signed by `issuer` (or self-signed).
#[allow(deprecated)] // X509Extension::new_nid: the simplest way to write AIA and CRL DP.
fn cert(spec: &Spec<'_>, key: &PKey<Private>, issuer: Option<(&X509, &PKey<Private>)>) -> X509 {
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_nid(Nid::COMMONNAME, spec.cn).unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    let serial = BigNum::from_u32(rand::random::<u32>() >> 1).unwrap();
    b.set_serial_number(&Asn1Integer::from_bn(&serial).unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(issuer.map_or(&*name, |(c, _)| c.subject_name()))
        .unwrap();
    b.set_pubkey(key).unwrap();
    b.set_not_before(&Asn1Time::from_unix(now() + spec.not_before * DAY).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::from_unix(now() + spec.not_after * DAY).unwrap())
        .unwrap();
    if spec.ca {
        b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
    }
    if !spec.san.is_empty() {
        let mut san = SubjectAlternativeName::new();
        for e in spec.san {
            match e.split_once(':').unwrap() {
                ("DNS", d) => san.dns(d),
                ("IP", i) => san.ip(i),
                other => panic!("{other:?}"),
            };
        }
        let ext = san.build(&b.x509v3_context(None, None)).unwrap();
        b.append_extension(ext).unwrap();
    }
    if let Some(u) = spec.ocsp {
        let ext =
            X509Extension::new_nid(None, None, Nid::INFO_ACCESS, &format!("OCSP;URI:{u}")).unwrap();
        b.append_extension(ext).unwrap();
    }
    if let Some(u) = spec.crl {
        let ext = X509Extension::new_nid(
            None,
            None,
            Nid::CRL_DISTRIBUTION_POINTS,
            &format!("URI:{u}"),
        )
        .unwrap();
        b.append_extension(ext).unwrap();
    }
    let signer = issuer.map_or(key, |(_, k)| k);
    b.sign(signer, MessageDigest::sha256()).unwrap();
    b.build()
}

/// Root CA -> intermediate CA -> leaf.
struct Pki {
    root: X509,
    inter: X509,
    leaf: X509,
    leaf_key: PKey<Private>,
}

fn pki(leaf_spec: &Spec<'_>) -> Pki {
    let root_key = key();
    let root = cert(
        &Spec {
            cn: "Test Root CA",
            san: &[],
            not_after: 3650,
            ca: true,
            ..Spec::default()
        },
        &root_key,
        None,
    );
    let inter_key = key();
    let inter = cert(
        &Spec {
            cn: "Test Intermediate CA",
            san: &[],
            not_after: 1825,
            ca: true,
            ..Spec::default()
        },
        &inter_key,
        Some((&root, &root_key)),
    );
    let leaf_key = key();
    let leaf = cert(leaf_spec, &leaf_key, Some((&inter, &inter_key)));
    Pki {
        root,
        inter,
        leaf,
        leaf_key,
    }
}

/// A temp dir with the files a test writes.
struct Files {
    dir: TempDir,
}

impl Files {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn write(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        p
    }

    /// An executable script `bin/<name>`.
    fn script(&self, name: &str, body: &str) {
        let p = self.write(
            &format!("bin/{name}"),
            format!("#!/bin/sh\n{body}\n").as_bytes(),
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn pem_config(&self, chain: &[&X509], key: &PKey<Private>) -> Config {
        let pem: Vec<u8> = chain.iter().flat_map(|c| c.to_pem().unwrap()).collect();
        let mut c = Config::default();
        c.tls.cert = Some(self.write("cert.pem", &pem));
        c.tls.key = Some(self.write("key.pem", &key.private_key_to_pem_pkcs8().unwrap()));
        c.server.server_name = Some("vpn.contoso.com".into());
        c
    }

    /// A host whose /proc/sys, /dev/net/tun and PATH live in the temp dir; no host networks.
    fn host(&self) -> Host {
        std::fs::create_dir_all(self.dir.path().join("bin")).unwrap();
        Host {
            proc_sys: self.dir.path().join("sys"),
            dev_tun: PathBuf::from("/dev/net/tun"),
            sys_module: self.dir.path().join("module"),
            path: Some(self.dir.path().join("bin").into_os_string()),
            networks: Some(Vec::new()),
            system_roots: false,
        }
    }
}

fn check(report: &Report, id: &str) -> Check {
    report
        .get(id)
        .unwrap_or_else(|| panic!("no check {id} in\n{report}"))
        .clone()
}

fn assert_status(report: &Report, id: &str, want: Status) -> Check {
    let c = check(report, id);
    assert_eq!(c.status, want, "{id}: {}\n{report}", c.summary);
    if matches!(want, Status::Warn | Status::Fail) {
        assert!(
            c.fix.as_deref().is_some_and(|f| !f.is_empty()),
            "{id} has no fix"
        );
    }
    c
}

/// Runs the checks with free listen ports (so only what the test changes can fail).
fn run_with(config: &mut Config, opts: &Options, host: &Host) -> Report {
    let free = |_: ()| {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    config.server.listen = free(());
    config.metrics.listen = Some(free(()));
    run(config, opts, host)
}

fn report_for(config: Config, files: &Files) -> Report {
    let mut config = config;
    run_with(&mut config, &Options::default(), &files.host())
}

// ---- host checks ----

#[test]
fn ip_forward_on_passes_off_or_unreadable_fails() {
    let f = Files::new();
    f.write("sys/net/ipv4/ip_forward", b"1\n");
    assert_status(
        &report_for(Config::default(), &f),
        "ip_forward",
        Status::Pass,
    );
    f.write("sys/net/ipv4/ip_forward", b"0\n");
    let c = assert_status(
        &report_for(Config::default(), &f),
        "ip_forward",
        Status::Fail,
    );
    assert!(c.fix.unwrap().contains("sysctl -w net.ipv4.ip_forward=1"));
    std::fs::remove_file(f.dir.path().join("sys/net/ipv4/ip_forward")).unwrap();
    assert_status(
        &report_for(Config::default(), &f),
        "ip_forward",
        Status::Fail,
    );
}

#[test]
fn ipv6_forward_is_checked_only_with_an_ipv6_pool() {
    let f = Files::new();
    f.write("sys/net/ipv6/conf/all/forwarding", b"0\n");
    assert!(report_for(Config::default(), &f)
        .get("ipv6_forward")
        .is_none());
    let mut c = Config::default();
    c.network.ipv6_pool = Some("fd00:5::/64".parse().unwrap());
    assert_status(&report_for(c.clone(), &f), "ipv6_forward", Status::Fail);
    f.write("sys/net/ipv6/conf/all/forwarding", b"1\n");
    assert_status(&report_for(c, &f), "ipv6_forward", Status::Pass);
}

#[test]
fn udp_buffer_caps_below_what_dtls_asks_for_warn_and_only_with_dtls() {
    let f = Files::new();
    f.write("sys/net/core/rmem_max", b"4194304\n");
    f.write("sys/net/core/wmem_max", b"8388608\n");
    assert_status(
        &report_for(Config::default(), &f),
        "udp_buffers",
        Status::Pass,
    );
    // The stock cap.
    f.write("sys/net/core/rmem_max", b"212992\n");
    let c = assert_status(
        &report_for(Config::default(), &f),
        "udp_buffers",
        Status::Warn,
    );
    assert!(
        c.summary.contains("net.core.rmem_max = 212992"),
        "{}",
        c.summary
    );
    assert!(!c.summary.contains("wmem_max"), "{}", c.summary);
    assert!(c
        .fix
        .unwrap()
        .contains("sysctl -w net.core.rmem_max=4194304"));
    std::fs::remove_file(f.dir.path().join("sys/net/core/wmem_max")).unwrap();
    let c = assert_status(
        &report_for(Config::default(), &f),
        "udp_buffers",
        Status::Warn,
    );
    assert!(c.summary.contains("cannot read"), "{}", c.summary);
    let mut no_dtls = Config::default();
    no_dtls.dtls.enabled = false;
    assert!(report_for(no_dtls, &f).get("udp_buffers").is_none());
}

#[test]
fn tun_device_node_passes_wrong_or_missing_node_fails() {
    let f = Files::new();
    let mut host = f.host();
    let mut c = Config::default();
    assert_status(
        &run_with(&mut c, &Options::default(), &host),
        "tun_device",
        Status::Pass,
    );
    host.dev_tun = PathBuf::from("/dev/null");
    let r = run_with(&mut c, &Options::default(), &host);
    assert!(assert_status(&r, "tun_device", Status::Fail)
        .summary
        .contains("1:3"));
    host.dev_tun = f.dir.path().join("net/tun");
    let r = run_with(&mut c, &Options::default(), &host);
    assert!(assert_status(&r, "tun_device", Status::Fail)
        .fix
        .unwrap()
        .contains("modprobe tun"));
    f.write("module/tun/refcnt", b"1");
    let r = run_with(&mut c, &Options::default(), &host);
    assert!(assert_status(&r, "tun_device", Status::Fail)
        .fix
        .unwrap()
        .contains("mknod"));
}

#[test]
fn nat_needs_a_working_nft_only_when_on() {
    let f = Files::new();
    let mut c = Config::default();
    assert_status(&report_for(c.clone(), &f), "nat_firewall", Status::Skip);
    c.network.nat = true;
    let r = report_for(c.clone(), &f);
    assert!(assert_status(&r, "nat_firewall", Status::Fail)
        .summary
        .contains("not installed"));
    f.script("iptables", "exit 0");
    let r = report_for(c.clone(), &f);
    assert!(assert_status(&r, "nat_firewall", Status::Fail)
        .summary
        .contains("iptables is installed"));
    f.script(
        "nft",
        "echo 'Error: Could not process rule: Operation not permitted' >&2; exit 1",
    );
    let r = report_for(c.clone(), &f);
    assert!(assert_status(&r, "nat_firewall", Status::Fail)
        .summary
        .contains("Operation not permitted"));
    f.script("nft", "echo 'nftables v1.0.6 (Lester Gooch #5)'; exit 0");
    let r = report_for(c, &f);
    assert!(assert_status(&r, "nat_firewall", Status::Pass)
        .summary
        .contains("v1.0.6"));
}

#[test]
fn container_runtime_versions_are_compared_when_asked() {
    let f = Files::new();
    let host = f.host();
    let mut c = Config::default();
    let asked = Options {
        container_runtime: true,
        ..Options::default()
    };
    assert_status(
        &run_with(&mut c, &Options::default(), &host),
        "container_runtime",
        Status::Skip,
    );
    assert_status(
        &run_with(&mut c, &asked, &host),
        "container_runtime",
        Status::Fail,
    );
    f.script("docker", "echo 'Docker version 18.09.1, build 4c52b90'");
    let r = run_with(&mut c, &asked, &host);
    assert!(assert_status(&r, "container_runtime", Status::Fail)
        .summary
        .contains("older than 19.03"));
    f.script(
        "docker",
        "echo 'Docker version 20.10.24+dfsg1, build 297e128'",
    );
    assert_status(
        &run_with(&mut c, &asked, &host),
        "container_runtime",
        Status::Pass,
    );
    std::fs::remove_file(f.dir.path().join("bin/docker")).unwrap();
    f.script("podman", "echo 'podman version 2.2.1'");
    assert_status(
        &run_with(&mut c, &asked, &host),
        "container_runtime",
        Status::Fail,
    );
    f.script("podman", "echo 'podman version 4.3.1'");
    assert_status(
        &run_with(&mut c, &asked, &host),
        "container_runtime",
        Status::Pass,
    );
}

#[test]
fn listen_port_in_use_fails_and_free_passes() {
    let f = Files::new();
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let mut c = Config::default();
    c.server.listen = held.local_addr().unwrap();
    c.metrics.listen = None;
    let r = run(&c, &Options::default(), &f.host());
    let fail = assert_status(&r, "listen.tls", Status::Fail);
    assert!(fail.summary.contains("in use") && fail.fix.unwrap().contains("ss -ltnp"));
    assert_status(&r, "listen.metrics", Status::Skip);
    drop(held);
    let r = run(&c, &Options::default(), &f.host());
    assert_status(&r, "listen.tls", Status::Pass);
}

#[test]
fn pool_overlapping_a_bridge_or_a_host_network_fails() {
    let f = Files::new();
    let mut host = f.host();
    let mut c = Config::default();
    assert_status(
        &run_with(&mut c, &Options::default(), &host),
        "address_overlap.pool",
        Status::Pass,
    );
    c.network.ipv4_pool = "172.17.8.0/24".parse().unwrap();
    let r = run_with(&mut c, &Options::default(), &host);
    assert!(assert_status(&r, "address_overlap.pool", Status::Fail)
        .summary
        .contains("Docker"));
    c.network.ipv4_pool = "10.88.0.0/24".parse().unwrap();
    let r = run_with(&mut c, &Options::default(), &host);
    assert!(assert_status(&r, "address_overlap.pool", Status::Fail)
        .summary
        .contains("Podman"));
    c.network.ipv4_pool = "10.20.0.0/24".parse().unwrap();
    host.networks = Some(vec![("eth0".into(), "10.20.0.0/16".parse().unwrap())]);
    let r = run_with(&mut c, &Options::default(), &host);
    assert!(assert_status(&r, "address_overlap.pool", Status::Fail)
        .summary
        .contains("eth0"));
}

#[test]
fn routes_overlapping_a_bridge_fail_and_a_host_network_warns() {
    let f = Files::new();
    let mut host = f.host();
    let mut c = Config::default();
    assert_status(
        &run_with(&mut c, &Options::default(), &host),
        "address_overlap.routes",
        Status::Skip,
    );
    c.network.split_include = vec!["10.200.0.0/16".parse().unwrap()];
    assert_status(
        &run_with(&mut c, &Options::default(), &host),
        "address_overlap.routes",
        Status::Pass,
    );
    c.network.split_include = vec!["172.16.0.0/12".parse().unwrap()];
    let r = run_with(&mut c, &Options::default(), &host);
    assert!(assert_status(&r, "address_overlap.routes", Status::Fail)
        .summary
        .contains("network.split_include[0] 172.16.0.0/12 overlaps Docker"));
    c.network.split_include = vec!["10.200.0.0/16".parse().unwrap()];
    host.networks = Some(vec![("corp0".into(), "10.200.1.0/24".parse().unwrap())]);
    assert_status(
        &run_with(&mut c, &Options::default(), &host),
        "address_overlap.routes",
        Status::Warn,
    );
}

#[test]
fn ip_json_yields_global_networks_except_our_tun() {
    let text = r#"[{"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host"}]},
        {"ifname":"eth0","addr_info":[{"family":"inet","local":"10.1.2.3","prefixlen":24,"scope":"global"},
                                      {"family":"inet6","local":"fe80::1","prefixlen":64,"scope":"link"},
                                      {"family":"inet6","local":"2001:db8::5","prefixlen":64,"scope":"global"}]},
        {"ifname":"tunneld0","addr_info":[{"family":"inet","local":"192.168.100.1","prefixlen":24,"scope":"global"}]}]"#;
    let nets = parse_ip_json(text, "tunneld0").unwrap();
    assert_eq!(
        nets,
        vec![
            ("eth0".to_owned(), "10.1.2.0/24".parse().unwrap()),
            ("eth0".to_owned(), "2001:db8::/64".parse().unwrap())
        ]
    );
}

// ---- certificate checks ----

#[test]
fn no_certificate_configured_warns_and_skips_the_rest() {
    let f = Files::new();
    let r = report_for(Config::default(), &f);
    assert_status(&r, "cert.readable", Status::Warn);
    for id in CERT_IDS.iter().skip(1) {
        assert_status(&r, id, Status::Skip);
    }
}

#[test]
fn good_ca_issued_pem_passes_every_certificate_check() {
    let f = Files::new();
    let p = pki(&Spec {
        ocsp: Some("http://ocsp.contoso.example"),
        crl: Some("http://crl.contoso.example/inter.crl"),
        ..Spec::default()
    });
    let c = f.pem_config(&[&p.leaf, &p.inter], &p.leaf_key);
    let opts = Options {
        ca_file: Some(f.write("root.pem", &p.root.to_pem().unwrap())),
        ..Options::default()
    };
    let r = run_with(&mut c.clone(), &opts, &f.host());
    for id in CERT_IDS {
        assert_status(&r, id, Status::Pass);
    }
    let rev = check(&r, "cert.revocation").summary;
    assert!(
        rev.contains("http://ocsp.contoso.example")
            && rev.contains("http://crl.contoso.example/inter.crl"),
        "{rev}"
    );
}

#[test]
fn unreadable_pem_fails() {
    let f = Files::new();
    let mut c = Config::default();
    c.tls.cert = Some(f.write("cert.pem", b"not a certificate"));
    c.tls.key = Some(f.write("key.pem", &key().private_key_to_pem_pkcs8().unwrap()));
    let r = report_for(c.clone(), &f);
    assert!(assert_status(&r, "cert.readable", Status::Fail)
        .summary
        .contains("no PEM certificate"));
    assert_status(&r, "cert.key_match", Status::Skip);
    c.tls.cert = Some(f.dir.path().join("missing.pem"));
    assert_status(&report_for(c, &f), "cert.readable", Status::Fail);
}

fn pfx(p: &Pki, password: &str) -> Vec<u8> {
    let mut ca = Stack::new().unwrap();
    ca.push(p.inter.clone()).unwrap();
    Pkcs12::builder()
        .name("vpn")
        .pkey(&p.leaf_key)
        .cert(&p.leaf)
        .ca(ca)
        .build2(password)
        .unwrap()
        .to_der()
        .unwrap()
}

#[test]
fn pfx_with_password_is_readable_with_it_and_fails_without() {
    let f = Files::new();
    let p = pki(&Spec::default());
    let mut c = Config::default();
    c.tls.pfx = Some(f.write("server.pfx", &pfx(&p, "s3cret")));
    let r = report_for(c.clone(), &f);
    let fail = assert_status(&r, "cert.readable", Status::Fail);
    assert!(
        fail.summary.contains("wrong or missing password"),
        "{}",
        fail.summary
    );
    c.tls.pfx_password = Some("wrong".into());
    assert_status(&report_for(c.clone(), &f), "cert.readable", Status::Fail);
    c.tls.pfx_password = None;
    c.tls.pfx_password_file = Some(f.write("pfx.pass", b"s3cret\n"));
    let r = report_for(c, &f);
    let ok = assert_status(&r, "cert.readable", Status::Pass);
    assert!(
        ok.summary.contains("PKCS#12") && ok.summary.contains("2 certificates"),
        "{}",
        ok.summary
    );
    assert_status(&r, "cert.key_match", Status::Pass);
}

#[test]
fn pfx_without_password_is_readable_without_one() {
    let f = Files::new();
    let p = pki(&Spec::default());
    let mut c = Config::default();
    c.tls.pfx = Some(f.write("server.pfx", &pfx(&p, "")));
    assert_status(&report_for(c.clone(), &f), "cert.readable", Status::Pass);
    c.tls.pfx = Some(f.write("bad.pfx", b"\x30\x03garbage"));
    assert_status(&report_for(c, &f), "cert.readable", Status::Fail);
}

#[test]
fn key_of_another_certificate_fails_and_names_where_it_belongs() {
    let f = Files::new();
    let p = pki(&Spec::default());
    let c = f.pem_config(&[&p.leaf], &key());
    assert_status(&report_for(c, &f), "cert.key_match", Status::Fail);
    // The key belongs to the second certificate: the order is wrong.
    let other_key = key();
    let other = cert(&Spec::default(), &other_key, None);
    let c = f.pem_config(&[&p.leaf, &other], &other_key);
    let r = report_for(c, &f);
    assert!(assert_status(&r, "cert.key_match", Status::Fail)
        .summary
        .contains("certificate #2"));
}

#[test]
fn expired_and_not_yet_valid_fail_expiring_soon_warns() {
    let f = Files::new();
    let expired = pki(&Spec {
        not_before: -400,
        not_after: -1,
        ..Spec::default()
    });
    let r = report_for(f.pem_config(&[&expired.leaf], &expired.leaf_key), &f);
    assert!(assert_status(&r, "cert.expiry", Status::Fail)
        .summary
        .contains("expired"));
    let future = pki(&Spec {
        not_before: 2,
        not_after: 300,
        ..Spec::default()
    });
    let r = report_for(f.pem_config(&[&future.leaf], &future.leaf_key), &f);
    assert!(assert_status(&r, "cert.expiry", Status::Fail)
        .summary
        .contains("not valid before"));
    let soon = pki(&Spec {
        not_after: 10,
        ..Spec::default()
    });
    let r = report_for(f.pem_config(&[&soon.leaf], &soon.leaf_key), &f);
    assert_status(&r, "cert.expiry", Status::Warn);
    let fine = pki(&Spec::default());
    let r = report_for(f.pem_config(&[&fine.leaf], &fine.leaf_key), &f);
    assert_status(&r, "cert.expiry", Status::Pass);
}

#[test]
fn three_year_validity_fails_two_years_passes() {
    let f = Files::new();
    let long = pki(&Spec {
        not_before: 0,
        not_after: 3 * 365,
        ..Spec::default()
    });
    let r = report_for(f.pem_config(&[&long.leaf], &long.leaf_key), &f);
    let fail = assert_status(&r, "cert.validity_period", Status::Fail);
    assert!(fail.summary.contains("1095 days"), "{}", fail.summary);
    let two = pki(&Spec {
        not_before: 0,
        not_after: 730,
        ..Spec::default()
    });
    let r = report_for(f.pem_config(&[&two.leaf], &two.leaf_key), &f);
    assert_status(&r, "cert.validity_period", Status::Pass);
}

#[test]
fn wrong_san_fails_matching_name_ip_or_wildcard_passes() {
    let f = Files::new();
    let wrong = pki(&Spec {
        san: &["DNS:other.contoso.com"],
        ..Spec::default()
    });
    let r = report_for(f.pem_config(&[&wrong.leaf], &wrong.leaf_key), &f);
    let fail = assert_status(&r, "cert.san", Status::Fail);
    assert!(
        fail.summary
            .contains("vpn.contoso.com is not in the SAN (DNS:other.contoso.com)"),
        "{}",
        fail.summary
    );

    let none = pki(&Spec {
        san: &[],
        ..Spec::default()
    });
    let r = report_for(f.pem_config(&[&none.leaf], &none.leaf_key), &f);
    assert!(assert_status(&r, "cert.san", Status::Fail)
        .summary
        .contains("no subjectAltName"));

    let wild = pki(&Spec {
        san: &["DNS:*.contoso.com"],
        ..Spec::default()
    });
    let r = report_for(f.pem_config(&[&wild.leaf], &wild.leaf_key), &f);
    assert_status(&r, "cert.san", Status::Pass);

    let ip = pki(&Spec {
        san: &["IP:203.0.113.10"],
        ..Spec::default()
    });
    let mut c = f.pem_config(&[&ip.leaf], &ip.leaf_key);
    c.server.server_name = Some("203.0.113.10".into());
    assert_status(&report_for(c.clone(), &f), "cert.san", Status::Pass);
    c.server.server_name = Some("203.0.113.11".into());
    assert_status(&report_for(c.clone(), &f), "cert.san", Status::Fail);
    // --public-name overrides server.server_name.
    let opts = Options {
        public_name: Some("203.0.113.10".into()),
        ..Options::default()
    };
    assert_status(
        &run_with(&mut c.clone(), &opts, &f.host()),
        "cert.san",
        Status::Pass,
    );
    c.server.server_name = None;
    assert_status(&report_for(c, &f), "cert.san", Status::Warn);
}

#[test]
fn wildcard_inside_a_label_fails_whole_leftmost_label_passes() {
    let f = Files::new();
    let bad = pki(&Spec {
        cn: "cont*.com",
        san: &["DNS:cont*.com"],
        ..Spec::default()
    });
    let r = report_for(f.pem_config(&[&bad.leaf], &bad.leaf_key), &f);
    assert!(assert_status(&r, "cert.wildcard", Status::Fail)
        .summary
        .contains("cont*.com"));
    let good = pki(&Spec {
        san: &["DNS:*.contoso.com"],
        ..Spec::default()
    });
    let r = report_for(f.pem_config(&[&good.leaf], &good.leaf_key), &f);
    assert!(assert_status(&r, "cert.wildcard", Status::Pass)
        .summary
        .contains("*.contoso.com"));
}

#[test]
fn wildcard_rules() {
    assert!(wildcard_is_valid("*.contoso.com"));
    assert!(wildcard_is_valid("vpn.contoso.com"));
    for bad in [
        "cont*.com",
        "*.com",
        "a.*.contoso.com",
        "*",
        "**.contoso.com",
        "*.*.contoso.com",
    ] {
        assert!(!wildcard_is_valid(bad), "{bad}");
    }
    assert!(dns_matches("*.contoso.com", "VPN.contoso.com"));
    assert!(!dns_matches("*.contoso.com", "contoso.com"));
    assert!(!dns_matches("*.contoso.com", "a.vpn.contoso.com"));
    assert!(!dns_matches("cont*.com", "contoso.com"));
    assert!(dns_matches("vpn.contoso.com.", "vpn.contoso.com"));
}

#[test]
fn missing_intermediate_fails_full_chain_passes() {
    let f = Files::new();
    let p = pki(&Spec::default());
    let opts = Options {
        ca_file: Some(f.write("root.pem", &p.root.to_pem().unwrap())),
        ..Options::default()
    };
    let mut c = f.pem_config(&[&p.leaf], &p.leaf_key);
    let r = run_with(&mut c, &opts, &f.host());
    let fail = assert_status(&r, "cert.chain", Status::Fail);
    assert!(
        fail.summary.contains("incomplete") && fail.summary.contains("Test Intermediate CA"),
        "{}",
        fail.summary
    );
    assert!(fail.fix.unwrap().contains("intermediate"));

    let mut c = f.pem_config(&[&p.leaf, &p.inter], &p.leaf_key);
    let r = run_with(&mut c, &opts, &f.host());
    assert!(assert_status(&r, "cert.chain", Status::Pass)
        .summary
        .contains("Test Root CA"));
    // Root included in the file, no --ca-file: the chain is complete but ends at an untrusted root.
    let mut c = f.pem_config(&[&p.leaf, &p.inter, &p.root], &p.leaf_key);
    let r = run_with(&mut c, &Options::default(), &f.host());
    assert_status(&r, "cert.chain", Status::Fail);
}

#[test]
fn self_signed_certificate_warns_in_the_chain_check() {
    let f = Files::new();
    let k = key();
    let c = cert(&Spec::default(), &k, None);
    let r = report_for(f.pem_config(&[&c], &k), &f);
    assert_status(&r, "cert.chain", Status::Warn);
}

#[test]
fn certificate_without_revocation_urls_warns() {
    let f = Files::new();
    let p = pki(&Spec::default());
    let r = report_for(f.pem_config(&[&p.leaf], &p.leaf_key), &f);
    assert_status(&r, "cert.revocation", Status::Warn);
}

#[test]
fn text_report_shows_status_id_summary_and_fix() {
    let r = Report {
        checks: vec![
            Check::pass("ip_forward", "net.ipv4.ip_forward = 1"),
            Check::fail("cert.san", "x is not in the SAN", "reissue it"),
        ],
    };
    let text = r.to_string();
    assert_eq!(
        text,
        "PASS  ip_forward  net.ipv4.ip_forward = 1\nFAIL  cert.san    x is not in the SAN\n                  fix: reissue it\n1 passed, 0 warnings, 1 failed, 0 skipped"
    );
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["checks"][1]["status"], "FAIL");
    assert!(json["checks"][0].get("fix").is_none());
    assert!(Report::config_error(&"network.mtu: too small").has_failures());
}
