//! hsmgate-rest end to end, over real HTTPS on loopback, with clients that
//! are not ours: curl (HTTP/1.1 and HTTP/2, bearer and `--cert` mutual
//! TLS) and Python `requests` with tokens minted by PyJWT and results
//! checked by `cryptography` (tests/python/rest_client.py). Behind the
//! service: a real gateway, directory and HSM nodes (a `World`).
//!
//! Needs curl and Python with requests, pyjwt and cryptography
//! (`$HSMGATE_PYTHON`, else `python3`). Without them each test says it is
//! skipped, unless `HSMGATE_REQUIRE_REST_TOOLS=1` (CI), where it fails.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hsmgate_authz::pki::{Ca, Leaf, Usage};
use hsmgate_rest::{RestConfig, RestService};
use hsmgate_tests::proc::{self, Daemon};
use hsmgate_tests::{PATIENCE, World, binary, dead_addr, metric_value};

fn python() -> String {
    std::env::var("HSMGATE_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Whether curl and the Python packages are here; panics when they are
/// required and are not.
fn tools() -> bool {
    let py = Command::new(python())
        .args(["-c", "import jwt, requests, cryptography"])
        .output()
        .is_ok_and(|o| o.status.success());
    let curl = Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let required = std::env::var("HSMGATE_REQUIRE_REST_TOOLS").is_ok_and(|v| v == "1");
    assert!(
        (py && curl) || !required,
        "HSMGATE_REQUIRE_REST_TOOLS=1 but curl ({curl}) or {} with jwt, requests, cryptography ({py}) is missing",
        python()
    );
    if !(py && curl) {
        eprintln!("skipped: needs curl and Python requests, pyjwt, cryptography");
    }
    py && curl
}

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/python/rest_client.py");

/// The certificates and keys of a REST deployment, under `dir/rest`.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn create(dir: &Path) -> Pki {
        let dir = dir.join("rest");
        std::fs::create_dir_all(&dir).expect("rest dir");
        let server_ca = Ca::new("rest server CA").expect("CA");
        std::fs::write(dir.join("ca.pem"), server_ca.cert_pem()).expect("write");
        server_ca
            .issue(&Leaf::new(
                Usage::Server,
                "hsmgate-rest",
                &["127.0.0.1", "localhost"],
            ))
            .expect("server certificate")
            .write(&dir.join("server.pem"), &dir.join("server.key"))
            .expect("write");
        let clients_ca = Ca::new("rest clients CA").expect("CA");
        std::fs::write(dir.join("clients-ca.pem"), clients_ca.cert_pem()).expect("write");
        for (name, cn, san) in [
            ("ci", "ci-runner", "ci.example.test"),
            ("stranger", "stranger", "stranger.example.test"),
        ] {
            clients_ca
                .issue(&Leaf::new(Usage::Client, cn, &[san]))
                .expect("client certificate")
                .write(
                    &dir.join(format!("{name}.pem")),
                    &dir.join(format!("{name}.key")),
                )
                .expect("write");
        }
        // The same names from a CA the service does not trust.
        Ca::new("other CA")
            .expect("CA")
            .issue(&Leaf::new(Usage::Client, "ci-runner", &["ci.example.test"]))
            .expect("impostor certificate")
            .write(&dir.join("impostor.pem"), &dir.join("impostor.key"))
            .expect("write");
        let out = proc::run(
            Command::new(python()).arg(SCRIPT).arg("keys").arg(&dir),
            PATIENCE,
        );
        assert!(out.status.success(), "making the token keys: {out}");
        Pki { dir }
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// A token from PyJWT signed with the key `kid` of `keys` (e.g. the
    /// `stranger` key, which is not in the service's key set).
    fn token_with_kid(&self, alg: &str, kid: &str) -> String {
        let out = proc::run(
            Command::new(python()).arg(SCRIPT).args([
                "mint",
                &self.dir.display().to_string(),
                alg,
                "{}",
                kid,
            ]),
            PATIENCE,
        );
        assert!(out.status.success(), "minting a token: {out}");
        out.stdout.trim().to_owned()
    }

    /// A token from PyJWT: the demo claims with `claims` (JSON) over them.
    fn token(&self, alg: &str, claims: &str) -> String {
        let out = proc::run(
            Command::new(python()).arg(SCRIPT).args([
                "mint",
                &self.dir.display().to_string(),
                alg,
                claims,
            ]),
            PATIENCE,
        );
        assert!(out.status.success(), "minting a token: {out}");
        out.stdout.trim().to_owned()
    }
}

/// The service's config text for `world`, with `limits` and the client
/// config file of its partition.
fn rest_toml(client_config: &str, limits: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "bearer"
address = "127.0.0.1:0"
auth = "jwt"

[[listeners]]
name = "mtls"
address = "127.0.0.1:0"
auth = "mtls"

[tls]
cert_file = "rest/server.pem"
key_file = "rest/server.key"
client_ca_file = "rest/clients-ca.pem"

[jwt]
jwks_file = "rest/jwks.json"
issuer = "https://issuer.test"
audience = "hsmgate-rest"

[[mtls.identities]]
match = "dns:ci.example.test"
tenant = "demo"
partitions = ["demo"]

[[partitions]]
name = "demo"
client_config = "{client_config}"
sessions = 2

[admin]
address = "127.0.0.1:0"

[limits]
{limits}
"#
    )
}

/// The identity provider stand-in: Python's HTTPS server publishing a key
/// set (at first a copy of the test keys') with the service's test
/// certificate.
struct Idp {
    _server: Daemon,
    served: PathBuf,
    port: u16,
}

impl Idp {
    fn start(dir: &Path, pki: &Pki) -> Idp {
        let served = dir.join("idp");
        std::fs::create_dir_all(&served).expect("idp dir");
        std::fs::copy(pki.dir.join("jwks.json"), served.join("jwks.json")).expect("copy");
        let server = Daemon::spawn(
            Command::new(python())
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/python/https_file_server.py"
                ))
                .arg(&served)
                .arg(pki.dir.join("server.pem"))
                .arg(pki.dir.join("server.key")),
        );
        let line = tokio::task::block_in_place(|| server.wait_for_line("port ", PATIENCE))
            .unwrap_or_else(|| panic!("the HTTPS server did not start\n{}", server.transcript()));
        let port = line
            .trim_start_matches("port ")
            .trim()
            .parse()
            .expect("port");
        Idp {
            _server: server,
            served,
            port,
        }
    }

    /// The service's config, its keys from this provider every `refresh_secs`.
    fn rest_toml(&self, refresh_secs: u64) -> String {
        rest_toml("client.toml", "").replace(
            "jwks_file = \"rest/jwks.json\"",
            &format!(
                "jwks_url = \"https://127.0.0.1:{}/jwks.json\"\njwks_refresh_secs = {refresh_secs}\njwks_ca_file = \"rest/ca.pem\"",
                self.port
            ),
        )
    }

    fn jwks(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.served.join("jwks.json")).expect("read");
        serde_json::from_str(&text).expect("json")
    }

    fn publish(&self, jwks: &serde_json::Value) {
        std::fs::write(self.served.join("jwks.json"), jwks.to_string()).expect("write");
    }
}

struct Deployment {
    world: World,
    pki: Pki,
    service: RestService,
}

impl Deployment {
    /// A world and hsmgate-rest for it with `limits`.
    async fn start(limits: &str) -> Deployment {
        let world = World::start().await;
        let pki = Pki::create(world.dir.path());
        Deployment::serve(world, pki, rest_toml("client.toml", limits)).await
    }

    /// hsmgate-rest for `world` with the config text `config` (the world's
    /// client.toml is written too).
    async fn serve(world: World, pki: Pki, config: String) -> Deployment {
        world.write_client_config("");
        let path = world.dir.path().join("rest.toml");
        std::fs::write(&path, config).expect("write rest.toml");
        let config = RestConfig::load(&path).expect("rest config");
        let service = RestService::start(config).await.expect("rest service");
        Deployment {
            world,
            pki,
            service,
        }
    }

    /// `POST random` for 8 bytes with `token`: (code and version, body).
    async fn random(&self, token: &str) -> (String, String) {
        self.curl_bearer(
            token,
            "POST",
            "/v1/partitions/demo/random",
            Some(r#"{"length":8}"#),
        )
        .await
    }

    fn url(&self, listener: &str) -> String {
        let addr = self.service.address(listener).expect("listener");
        format!("https://{addr}")
    }

    fn metric(&self, sample: &str) -> f64 {
        metric_value(&self.service.metrics_text(), sample)
    }

    /// curl with the service's CA, off the runtime: (HTTP code, body, exit).
    async fn curl(&self, args: Vec<String>) -> (String, String, Option<i32>) {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "10", "--cacert"])
            .arg(self.pki.file("ca.pem"))
            .args(["-o", "-", "-w", "\n%{http_code} %{http_version}"])
            .args(args);
        let out = proc::run_async(cmd, PATIENCE).await;
        let (body, tail) = out.stdout.rsplit_once('\n').unwrap_or(("", &out.stdout));
        let body = if out.stderr.is_empty() {
            body.to_owned()
        } else {
            format!("{body}\n(curl: {})", out.stderr.trim())
        };
        (tail.to_owned(), body, out.code())
    }

    async fn curl_bearer(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (String, String) {
        let mut args = vec![
            "-X".to_owned(),
            method.to_owned(),
            "-H".into(),
            format!("Authorization: Bearer {token}"),
        ];
        if let Some(b) = body {
            args.extend([
                "-H".into(),
                "Content-Type: application/json".into(),
                "--data".into(),
                b.into(),
            ]);
        }
        args.push(format!("{}{path}", self.url("bearer")));
        let (code, body, _) = self.curl(args).await;
        (code, body)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_requests_runs_the_api_and_every_refusal() {
    if !tools() {
        return;
    }
    let d = Deployment::start("").await;
    let mut cmd = Command::new(python());
    cmd.arg(SCRIPT)
        .arg("run")
        .arg(d.url("bearer"))
        .arg(d.pki.file("ca.pem"))
        .arg(&d.pki.dir);
    let out = proc::run_async(cmd, Duration::from_secs(120)).await;
    assert!(out.status.success(), "the Python suite failed: {out}");
    let report: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("report");
    assert!(report["checks"].as_u64().unwrap_or(0) >= 60, "{report}");

    // Each refusal is counted by its reason, and the route's status.
    for (reason, at_least) in [
        ("missing", 1.0),
        ("malformed", 1.0),
        ("expired", 1.0),
        ("not_yet_valid", 1.0),
        ("audience", 1.0),
        ("issuer", 1.0),
        ("signature", 1.0),
        ("algorithm", 2.0),
        ("claims", 1.0),
    ] {
        let n = d.metric(&format!(
            "hsmgate_rest_auth_failures_total{{reason=\"{reason}\"}}"
        ));
        assert!(n >= at_least, "{reason}: {n}");
    }
    let keys = "/v1/partitions/{partition}/keys";
    for status in ["201", "401", "403", "409", "413", "415", "400"] {
        let n = d.metric(&format!(
            "hsmgate_rest_requests_total{{route=\"{keys}\",status=\"{status}\"}}"
        ));
        assert!(n >= 1.0, "{status}: {n}");
    }
    // The pool held its sessions to the gateway throughout.
    assert!(d.metric("hsmgate_rest_upstream_sessions{partition=\"demo\"}") >= 1.0);
    assert_eq!(
        d.metric("hsmgate_rest_upstream_connects_total{outcome=\"failed\",partition=\"demo\"}"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_over_http1_and_http2_with_a_token_and_with_a_client_certificate() {
    if !tools() {
        return;
    }
    let d = Deployment::start("").await;
    let token = d.pki.token("EdDSA", "{}");
    let random = |version: &str| {
        vec![
            version.to_owned(),
            "-H".into(),
            format!("Authorization: Bearer {token}"),
            "-H".into(),
            "Content-Type: application/json".into(),
            "--data".into(),
            r#"{"length":32}"#.into(),
            format!("{}/v1/partitions/demo/random", d.url("bearer")),
        ]
    };
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let (code, body, _) = d.curl(random(flag)).await;
        assert_eq!(code, format!("200 {version}"), "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["data"].as_str().map(str::len), Some(43), "{body}");
    }

    // Mutual TLS: the CI certificate maps to the demo tenant.
    let mtls = |cert: &str, key: &str| {
        vec![
            "--cert".to_owned(),
            d.pki.file(cert),
            "--key".into(),
            d.pki.file(key),
            format!("{}/v1/partitions/demo/keys", d.url("mtls")),
        ]
    };
    let (code, body, _) = d.curl(mtls("ci.pem", "ci.key")).await;
    assert_eq!(code, "200 2", "{body}");
    assert!(body.contains("\"keys\""), "{body}");
    // A certificate of the trusted CA that names no identity: 403.
    let (code, body, _) = d.curl(mtls("stranger.pem", "stranger.key")).await;
    assert_eq!(code, "403 2", "{body}");
    assert!(body.contains("urn:hsmgate:problem:forbidden"), "{body}");
    assert!(d.metric("hsmgate_rest_auth_failures_total{reason=\"unknown_certificate\"}") >= 1.0);
    // The same names from another CA, and no certificate at all: the TLS
    // handshake fails, no HTTP answer at all.
    let failures = d.metric("hsmgate_rest_tls_handshake_failures_total");
    let (code, _, exit) = d.curl(mtls("impostor.pem", "impostor.key")).await;
    assert!(
        code.starts_with("000") && exit != Some(0),
        "{code} {exit:?}"
    );
    let (code, _, exit) = d
        .curl(vec![format!("{}/v1/partitions/demo/keys", d.url("mtls"))])
        .await;
    assert!(
        code.starts_with("000") && exit != Some(0),
        "{code} {exit:?}"
    );
    assert!(d.metric("hsmgate_rest_tls_handshake_failures_total") >= failures + 2.0);
    // A bearer token means nothing on the mTLS listener, a certificate
    // nothing on the bearer listener.
    let (code, _, _) = d
        .curl(vec![
            "--cert".into(),
            d.pki.file("ci.pem"),
            "--key".into(),
            d.pki.file("ci.key"),
            format!("{}/v1/partitions/demo/keys", d.url("bearer")),
        ])
        .await;
    assert_eq!(code, "401 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_made_through_rest_serve_the_cli_and_the_other_way_round() {
    if !tools() {
        return;
    }
    let d = Deployment::start("").await;
    let token = d.pki.token("ES256", "{}");
    let client_toml = d.world.dir.path().join("client.toml");
    let cli = |args: &[&str]| {
        let mut cmd = Command::new(binary("hsmgate-client"));
        cmd.arg("--config").arg(&client_toml).args(args);
        cmd
    };

    // REST makes a P-256 key; the CLI signs with it; REST verifies.
    let (code, body) = d
        .curl_bearer(
            &token,
            "POST",
            "/v1/partitions/demo/keys",
            Some(r#"{"label":"rest-made","type":"p256"}"#),
        )
        .await;
    assert_eq!(code, "201 2", "{body}");
    let out = proc::run_async(
        cli(&["sign", "--key", "rest-made", "--data", "0102"]),
        PATIENCE,
    )
    .await;
    assert!(out.status.success(), "{out}");
    let signature = hex::decode(out.stdout.trim()).expect("hex signature");
    let b64 = |b: &[u8]| base64url(b);
    let verify = format!(
        r#"{{"data":"{}","signature":"{}"}}"#,
        b64(&[1, 2]),
        b64(&signature)
    );
    let (code, body) = d
        .curl_bearer(
            &token,
            "POST",
            "/v1/partitions/demo/keys/rest-made/verify",
            Some(&verify),
        )
        .await;
    assert_eq!(
        (code.as_str(), body.as_str()),
        ("200 2", r#"{"valid":true}"#)
    );

    // The CLI makes an Ed25519 key; REST signs; the CLI verifies.
    let out = proc::run_async(
        cli(&["keygen", "--type", "ed25519", "--label", "cli-made"]),
        PATIENCE,
    )
    .await;
    assert!(out.status.success(), "{out}");
    let sign = format!(r#"{{"data":"{}"}}"#, b64(b"from rest"));
    let (code, body) = d
        .curl_bearer(
            &token,
            "POST",
            "/v1/partitions/demo/keys/cli-made/sign",
            Some(&sign),
        )
        .await;
    assert_eq!(code, "200 2", "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let signature = unbase64url(v["signature"].as_str().expect("signature"));
    let out = proc::run_async(
        cli(&[
            "verify",
            "--key",
            "cli-made",
            "--data",
            &hex::encode(b"from rest"),
            "--signature",
            &hex::encode(&signature),
        ]),
        PATIENCE,
    )
    .await;
    assert_eq!(out.code(), Some(0), "{out}");
    // And a flipped bit does not verify through the CLI.
    let mut bad = signature.clone();
    bad[0] ^= 1;
    let out = proc::run_async(
        cli(&[
            "verify",
            "--key",
            "cli-made",
            "--data",
            &hex::encode(b"from rest"),
            "--signature",
            &hex::encode(&bad),
        ]),
        PATIENCE,
    )
    .await;
    assert_eq!(out.code(), Some(1), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_over_its_rate_gets_429_and_others_go_on() {
    if !tools() {
        return;
    }
    let d = Deployment::start("requests_per_second = 1\nburst = 3\n").await;
    let greedy = d.pki.token("ES256", r#"{"sub":"greedy"}"#);
    let polite = d.pki.token("ES256", r#"{"sub":"polite"}"#);
    let path = "/v1/partitions/demo/keys";
    let mut codes = Vec::new();
    for _ in 0..5 {
        codes.push(d.curl_bearer(&greedy, "GET", path, None).await);
    }
    let limited: Vec<&(String, String)> = codes.iter().filter(|(c, _)| c == "429 2").collect();
    assert!(!limited.is_empty(), "{codes:?}");
    assert!(
        limited[0].1.contains("urn:hsmgate:problem:rate-limited"),
        "{codes:?}"
    );
    let (code, _) = d.curl_bearer(&polite, "GET", path, None).await;
    assert_eq!(code, "200 2");
    // Retry-After is there.
    let (head, _, _) = d
        .curl(vec![
            "-D".into(),
            "/dev/stderr".into(),
            "-H".into(),
            format!("Authorization: Bearer {greedy}"),
            format!("{}{path}", d.url("bearer")),
        ])
        .await;
    assert_eq!(head, "429 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_key_set_drops_a_removed_key() {
    if !tools() {
        return;
    }
    let d = Deployment::start("").await;
    let es = d.pki.token("ES256", "{}");
    let ed = d.pki.token("EdDSA", "{}");
    let path = "/v1/partitions/demo/keys";
    assert_eq!(d.curl_bearer(&es, "GET", path, None).await.0, "200 2");
    let jwks_file = d.pki.dir.join("jwks.json");
    let mut jwks: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&jwks_file).expect("read")).expect("json");
    jwks["keys"]
        .as_array_mut()
        .expect("keys")
        .retain(|k| k["kid"] != "es1");
    std::fs::write(&jwks_file, jwks.to_string()).expect("write");
    assert!(d.service.reload().is_empty());
    let (code, body) = d.curl_bearer(&es, "GET", path, None).await;
    assert_eq!(code, "401 2", "{body}");
    assert!(d.metric("hsmgate_rest_auth_failures_total{reason=\"unknown_key\"}") >= 1.0);
    assert_eq!(d.curl_bearer(&ed, "GET", path, None).await.0, "200 2");
    // A broken file keeps the keys in force.
    std::fs::write(&jwks_file, "{not json").expect("write");
    assert_eq!(d.service.reload().len(), 1);
    assert_eq!(d.curl_bearer(&ed, "GET", path, None).await.0, "200 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_gateway_the_answer_is_503_and_the_service_is_not_ready() {
    if !tools() {
        return;
    }
    let world = World::start().await;
    let text = world.client_toml().replacen(
        &world.gateway_addr().to_string(),
        &dead_addr().to_string(),
        1,
    );
    std::fs::write(world.dir.path().join("dead.toml"), text).expect("write");
    let pki = Pki::create(world.dir.path());
    let d = Deployment::serve(world, pki, rest_toml("dead.toml", "")).await;
    let token = d.pki.token("ES256", "{}");
    let (code, body) = d.random(&token).await;
    assert_eq!(code, "503 2", "{body}");
    assert!(
        body.contains("urn:hsmgate:problem:hsm-unavailable"),
        "{body}"
    );
    let admin = d.service.admin_address().expect("admin");
    let (status, text) = hsmgate_tests::http_get(admin, "/readyz").await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("demo"), "{text}");
    assert!(
        d.metric("hsmgate_rest_upstream_connects_total{outcome=\"failed\",partition=\"demo\"}")
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_checks_its_config_serves_and_drains_on_sigterm() {
    if !tools() {
        return;
    }
    let world = World::start().await;
    world.write_client_config("");
    let _pki = Pki::create(world.dir.path());
    let dir = world.dir.path();
    let good = dir.join("rest.toml");
    std::fs::write(&good, rest_toml("client.toml", "")).expect("write");
    let out = check_config(&good).await;
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(
        out.stdout
            .contains("ok (2 listener(s), 1 partition(s), 3 token key(s))"),
        "{out}"
    );
    // --check reads the files the config names, as a start would.
    let missing = dir.join("missing-cert.toml");
    std::fs::write(
        &missing,
        rest_toml("client.toml", "").replace("rest/server.pem", "rest/nowhere.pem"),
    )
    .expect("write");
    let out = check_config(&missing).await;
    assert_eq!(out.code(), Some(2), "{out}");
    assert!(out.stderr.contains("nowhere.pem"), "{out}");

    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        rest_toml("client.toml", "max_body_bytes = 5")
            .replace("auth = \"jwt\"", "auth = \"basic\""),
    )
    .expect("write");
    let out = check_config(&bad).await;
    assert_eq!(out.code(), Some(2), "{out}");
    assert!(
        out.stderr
            .contains("listeners[0].auth: must be \"jwt\" or \"mtls\""),
        "{out}"
    );
    assert!(out.stderr.contains("limits.max_body_bytes"), "{out}");

    let daemon = Daemon::spawn(
        Command::new(binary("hsmgate-rest"))
            .arg("--config")
            .arg(&good),
    );
    let ready =
        tokio::task::block_in_place(|| daemon.wait_for_line("hsmgate-rest ready", PATIENCE));
    assert!(ready.is_some(), "{}", daemon.transcript());
    let line = daemon
        .seen_line("listening bearer")
        .expect("bearer address");
    let addr: SocketAddr = line
        .rsplit("https://")
        .next()
        .and_then(|a| a.parse().ok())
        .expect("address");
    let token = _pki.token("ES256", "{}");
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "--cacert"])
        .arg(_pki.file("ca.pem"))
        .args(["-o", "/dev/null", "-w", "%{http_code}", "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .arg(format!("https://{addr}/v1/partitions/demo/keys"));
    let out = proc::run_async(cmd, PATIENCE).await;
    assert_eq!(out.stdout, "200", "{out}\n{}", daemon.transcript());
    daemon.guard.signal("TERM");
    let mut daemon = daemon;
    let status = tokio::task::block_in_place(|| daemon.guard.wait_timeout(PATIENCE));
    assert!(
        status.is_some_and(|s| s.success()),
        "{}",
        daemon.transcript()
    );
    assert!(daemon.stderr_contains("stopped"), "{}", daemon.transcript());
    // The access log line of the request names the route, never the token.
    assert!(
        daemon.stderr_contains("route=\"/v1/partitions/{partition}/keys\""),
        "{}",
        daemon.transcript()
    );
    assert!(!daemon.stderr_contains(&token), "the token reached the log");
}

/// `hsmgate-rest --config PATH --check`.
async fn check_config(path: &Path) -> proc::Output {
    let mut cmd = Command::new(binary("hsmgate-rest"));
    cmd.arg("--config").arg(path).arg("--check");
    proc::run_async(cmd, PATIENCE).await
}

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn unbase64url(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let values: Vec<u32> = text
        .bytes()
        .map(|c| ALPHABET.iter().position(|a| *a == c).expect("base64url") as u32)
        .collect();
    let mut out = Vec::new();
    for chunk in values.chunks(4) {
        let n = chunk.iter().fold(0u32, |acc, v| (acc << 6) | v) << (6 * (4 - chunk.len()));
        for i in 0..chunk.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

#[test]
fn base64url_helpers_round_trip() {
    for len in 0..10 {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 250) as u8).collect();
        assert_eq!(unbase64url(&base64url(&bytes)), bytes);
    }
    assert_eq!(base64url(&[1, 2]), "AQI");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_a_jwks_url_are_fetched_and_refreshed() {
    if !tools() {
        return;
    }
    let world = World::start().await;
    let pki = Pki::create(world.dir.path());
    let idp = Idp::start(world.dir.path(), &pki);
    let d = Deployment::serve(world, pki, idp.rest_toml(1)).await;
    let es = d.pki.token("ES256", "{}");
    let ed = d.pki.token("EdDSA", "{}");
    let keys = "/v1/partitions/demo/keys";
    assert_eq!(d.curl_bearer(&es, "GET", keys, None).await.0, "200 2");

    // The provider drops es1: within a few refreshes its tokens are refused.
    let mut jwks = idp.jwks();
    jwks["keys"]
        .as_array_mut()
        .expect("keys")
        .retain(|k| k["kid"] != "es1");
    idp.publish(&jwks);
    let mut refused = false;
    for _ in 0..50 {
        if d.curl_bearer(&es, "GET", keys, None).await.0 == "401 2" {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        refused,
        "es1 tokens still accepted after the provider dropped the key"
    );
    assert_eq!(d.curl_bearer(&ed, "GET", keys, None).await.0, "200 2");
    assert!(d.metric("hsmgate_rest_jwks_refreshes_total{outcome=\"ok\"}") >= 1.0);

    // The provider goes away: refreshes fail, the keys in force stay.
    drop(idp);
    let failed = d.metric("hsmgate_rest_jwks_refreshes_total{outcome=\"failed\"}");
    for _ in 0..50 {
        if d.metric("hsmgate_rest_jwks_refreshes_total{outcome=\"failed\"}") > failed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(d.metric("hsmgate_rest_jwks_refreshes_total{outcome=\"failed\"}") > failed);
    assert_eq!(d.curl_bearer(&ed, "GET", keys, None).await.0, "200 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_server_certificate_is_served_once_its_files_change() {
    if !tools() {
        return;
    }
    let d = Deployment::start("").await;
    let token = d.pki.token("ES256", "{}");
    let keys = "/v1/partitions/demo/keys";
    assert_eq!(d.curl_bearer(&token, "GET", keys, None).await.0, "200 2");
    // Nothing changed: nothing is re-read.
    assert!(d.service.reload_if_changed().is_empty());

    // A certificate from a new CA replaces the old one on disk, as
    // cert-manager would renew it.
    let renewed = Ca::new("rest server CA, renewed").expect("CA");
    std::fs::write(d.pki.dir.join("ca2.pem"), renewed.cert_pem()).expect("write");
    renewed
        .issue(&Leaf::new(Usage::Server, "hsmgate-rest", &["127.0.0.1"]))
        .expect("certificate")
        .write(&d.pki.dir.join("server.pem"), &d.pki.dir.join("server.key"))
        .expect("write");
    assert!(d.service.reload_if_changed().is_empty());
    let url = format!("{}{keys}", d.url("bearer"));
    let auth = format!("Authorization: Bearer {token}");
    // The old CA no longer verifies the service; the new one does.
    let (code, _, exit) = d.curl(vec!["-H".into(), auth.clone(), url.clone()]).await;
    assert!(code.starts_with("000") && exit != Some(0), "{code}");
    let renewed_ca = d.pki.dir.join("ca2.pem");
    let with_renewed_ca = || {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg("--cacert")
        .arg(&renewed_ca)
        .args(["-H", &auth, &url]);
        proc::run_async(cmd, PATIENCE)
    };
    let out = with_renewed_ca().await;
    assert_eq!(out.stdout, "200", "{out}");

    // A broken key file is reported and the renewed certificate stays.
    std::fs::write(d.pki.dir.join("server.key"), "not a key").expect("write");
    assert!(!d.service.reload_if_changed().is_empty());
    let out = with_renewed_ca().await;
    assert_eq!(out.stdout, "200", "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    if !tools() {
        return;
    }
    use tokio::io::AsyncReadExt;
    let d = Deployment::start("idle_timeout_ms = 300\n").await;
    let mut roots = rustls::RootCertStore::empty();
    for cert in hsmgate_authz::tls::read_certificates(&d.pki.dir.join("ca.pem")).expect("CA") {
        roots.add(cert).expect("root");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    for alpn in [&b"http/1.1"[..], b"h2"] {
        tls.alpn_protocols = vec![alpn.to_vec()];
        let addr = d.service.address("bearer").expect("listener");
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls.clone()))
            .connect(rustls::pki_types::ServerName::from(addr.ip()), tcp)
            .await
            .expect("TLS");
        // Say nothing: the service closes the connection (HTTP/2: after its
        // SETTINGS and a GOAWAY) after 300 ms, well before this wait's 3 s
        // and before the 5 s of the header timeout (HTTP/1.1).
        let mut buf = vec![0u8; 4096];
        let closed = tokio::time::timeout(Duration::from_secs(3), async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "an idle {} connection stayed open",
            String::from_utf8_lossy(alpn)
        );
    }
    assert_eq!(d.metric("hsmgate_rest_connections_open"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_gateway_without_a_request() {
    if !tools() {
        return;
    }
    // The gateway is down when the service starts: not ready. It comes
    // back: ready within the re-warm interval, with no request in between.
    let mut world = World::start().await;
    world.gateway_server.stop().await;
    let pki = Pki::create(world.dir.path());
    let mut d = Deployment::serve(world, pki, rest_toml("client.toml", "")).await;
    let admin = d.service.admin_address().expect("admin");
    let ready = |status: u16| async move {
        for _ in 0..150 {
            if hsmgate_tests::http_get(admin, "/readyz").await.0 == status {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    assert!(ready(503).await, "ready without a gateway");
    d.world.restart_gateway().await;
    assert!(ready(200).await, "not ready again once the gateway is back");
    let token = d.pki.token("ES256", "{}");
    let (code, body) = d.random(&token).await;
    assert_eq!(code, "200 2", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_of_failed_tokens_is_cut_off_and_tokens_verified_before_go_on() {
    if !tools() {
        return;
    }
    let d = Deployment::start("auth_failures_per_second = 1\nauth_failure_burst = 3\n").await;
    let keys = "/v1/partitions/demo/keys";
    let known = d.pki.token("ES256", r#"{"sub":"known"}"#);
    assert_eq!(d.curl_bearer(&known, "GET", keys, None).await.0, "200 2");
    // Three tokens signed by a key the service does not know: 401 each,
    // then the address has no failures left and the next is not checked.
    let bad = d.pki.token_with_kid("ES256", "stranger");
    for _ in 0..3 {
        assert_eq!(d.curl_bearer(&bad, "GET", keys, None).await.0, "401 2");
    }
    let (code, body) = d.curl_bearer(&bad, "GET", keys, None).await;
    assert_eq!(code, "429 2", "{body}");
    assert!(body.contains("too many failed authentications"), "{body}");
    // A valid token never seen before waits too; one verified before
    // costs no signature check and goes on.
    let fresh = d.pki.token("ES256", r#"{"sub":"fresh"}"#);
    assert_eq!(d.curl_bearer(&fresh, "GET", keys, None).await.0, "429 2");
    assert_eq!(d.curl_bearer(&known, "GET", keys, None).await.0, "200 2");
    assert!(d.metric("hsmgate_rest_auth_failures_total{reason=\"too_many_failures\"}") >= 2.0);
    // The budget refills at one a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(d.curl_bearer(&fresh, "GET", keys, None).await.0, "200 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_with_a_new_kid_makes_the_jwks_url_fetched_early() {
    if !tools() {
        return;
    }
    let world = World::start().await;
    let pki = Pki::create(world.dir.path());
    let idp = Idp::start(world.dir.path(), &pki);
    let d = Deployment::serve(world, pki, idp.rest_toml(3600)).await;
    // The issuer rotates: a new key, kid "rotated", is published, and a
    // token signed with it arrives before the hourly refresh.
    let out = proc::run(
        Command::new(python()).arg(SCRIPT).args([
            "jwk",
            &d.pki.dir.display().to_string(),
            "stranger",
            "rotated",
        ]),
        PATIENCE,
    );
    assert!(out.status.success(), "{out}");
    let jwk: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("jwk");
    let mut jwks = idp.jwks();
    jwks["keys"].as_array_mut().expect("keys").push(jwk);
    idp.publish(&jwks);
    let rotated = d.pki.token_with_kid("ES256", "stranger:rotated");
    let keys = "/v1/partitions/demo/keys";
    assert_eq!(d.curl_bearer(&rotated, "GET", keys, None).await.0, "401 2");
    let mut accepted = false;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if d.curl_bearer(&rotated, "GET", keys, None).await.0 == "200 2" {
            accepted = true;
            break;
        }
    }
    assert!(accepted, "the rotated key was not fetched early");
    assert_eq!(
        d.metric("hsmgate_rest_jwks_refreshes_total{outcome=\"ok\"}"),
        1.0,
        "one early fetch, spaced, not one per refused token"
    );
    drop(idp);
}
