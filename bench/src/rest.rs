//! The `rest` scenario: P-256 signatures per second through hsmgate-rest
//! (`POST /v1/partitions/bench/keys/{label}/sign`, a bearer token, HTTPS)
//! against the same signatures through the SDK, with the same number of
//! callers and the same two hsmgate sessions behind each path. Over
//! HTTP/1.1 each caller keeps its own keep-alive connection; over HTTP/2
//! all callers share one connection, one stream per request. The ratio is
//! what the REST path costs: TLS, HTTP, JSON and base64, token checks, and
//! one more hop.
//!
//! hsmgate-rest runs as its own process (the binary next to this one), so
//! its CPU time per request is measured apart from the load generator's.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use hsmgate_client::{ClientConfig, KeyType};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::deploy::{CLIENT_ID, Deployment, PARTITION_HSM, TENANT};
use crate::procstat;
use crate::report::RestRow;

/// The key both paths sign with.
const LABEL: &str = "bench-rest-p256";
/// hsmgate sessions behind each path.
const SESSIONS: usize = 2;

/// A running hsmgate-rest, its client TLS config and token, and the SDK's
/// sessions.
pub struct RestBench {
    child: Child,
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    token: String,
    sdk: Vec<hsmgate_client::Session>,
}

impl Drop for RestBench {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How the load generator speaks HTTP.
#[derive(Debug, Clone, Copy)]
enum Http {
    One,
    Two,
}

type Sender1 = hyper::client::conn::http1::SendRequest<Full<Bytes>>;
type Sender2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

impl RestBench {
    /// Start `bin` for the deployment's HSM partition (through the cached
    /// gateway), make the key, and connect the SDK.
    pub async fn setup(dep: &Deployment, bin: &Path) -> anyhow::Result<RestBench> {
        let dir = dep.dir.path().join("rest");
        std::fs::create_dir_all(&dir)?;
        let id = &dep.identity;
        let hsm_keys = id
            .hsm_keys
            .iter()
            .map(|k| format!("\"{}\"", k.to_text()))
            .collect::<Vec<_>>()
            .join(", ");
        let client = dir.join("client.toml");
        std::fs::write(
            &client,
            format!(
                "gateway = \"{}\"\ngateway_key = \"{}\"\nclient_id = \"{CLIENT_ID}\"\n\
                 tenant = \"{TENANT}\"\npartition = \"{PARTITION_HSM}\"\n\
                 identity_file = \"../client.key\"\npartition_key_file = \"../partition.key\"\n\
                 hsm_keys = [{hsm_keys}]\n",
                dep.gateway.addr,
                id.gateway_key.to_text()
            ),
        )?;
        let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])?;
        std::fs::write(dir.join("server.pem"), cert.cert.pem())?;
        std::fs::write(dir.join("server.key"), cert.signing_key.serialize_pem())?;
        let issuer = hsmgate_rest::dev::DevIssuer::load_or_create(&dir)?;
        let token = issuer.token("bench", TENANT, &[PARTITION_HSM], 24 * 3600);
        std::fs::write(
            dir.join("rest.toml"),
            format!(
                "drain_timeout_secs = 1\n\
                 [[listeners]]\nname = \"bench\"\naddress = \"127.0.0.1:0\"\nauth = \"jwt\"\n\
                 [tls]\ncert_file = \"server.pem\"\nkey_file = \"server.key\"\n\
                 [jwt]\njwks_file = \"jwks.json\"\nissuer = \"{}\"\naudience = \"{}\"\n\
                 [[partitions]]\nname = \"{PARTITION_HSM}\"\nclient_config = \"client.toml\"\nsessions = {SESSIONS}\n\
                 [limits]\nrequests_per_second = 1000000\nburst = 1000000\n",
                hsmgate_rest::dev::ISSUER,
                hsmgate_rest::dev::AUDIENCE,
            ),
        )?;
        let (child, addr) = spawn(bin, &dir.join("rest.toml"))?;

        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.cert.der().clone())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];

        let config = ClientConfig::load(&client).context("the benchmark's client config")?;
        let mut sdk = Vec::new();
        for _ in 0..SESSIONS {
            sdk.push(hsmgate_client::connect(&config, &Default::default()).await?);
        }
        match sdk[0].generate_key(KeyType::P256, LABEL).await {
            Ok(_) => {}
            Err(hsmgate_client::ClientError::Operation {
                status: hsmgate_client::Status::AlreadyExists,
                ..
            }) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(RestBench {
            child,
            addr,
            tls: Arc::new(tls),
            token,
            sdk,
        })
    }

    /// One row: `callers` on the SDK, on REST over HTTP/1.1 and over
    /// HTTP/2, each for `run` after `warmup`, at most `max_ops` measured
    /// signatures each.
    pub async fn row(
        &self,
        callers: usize,
        warmup: Duration,
        run: Duration,
        max_ops: u64,
    ) -> anyhow::Result<RestRow> {
        let sdk = self.sdk_run(callers, warmup, run, max_ops).await?;
        let pid = self.child.id();
        let before = procstat::usage(pid)?;
        let h1 = self
            .rest_run(Http::One, callers, warmup, run, max_ops)
            .await?;
        let middle = procstat::usage(pid)?;
        let h2 = self
            .rest_run(Http::Two, callers, warmup, run, max_ops)
            .await?;
        let after = procstat::usage(pid)?;
        let rate = |o: &crate::scenario::LoadOutcome| o.hist.count() as f64 / o.seconds;
        // CPU of the whole run (warm-up included) over every request sent.
        let cpu_per = |cpu: Duration, o: &crate::scenario::LoadOutcome| {
            let requests = (rate(o) * (o.seconds + warmup.as_secs_f64())).max(1.0);
            cpu.as_secs_f64() * 1e6 / requests
        };
        let (sdk_rate, h1_rate, h2_rate) = (rate(&sdk), rate(&h1), rate(&h2));
        Ok(RestRow {
            callers,
            sdk_per_second: sdk_rate,
            sdk: sdk.hist.summary(),
            http1_per_second: h1_rate,
            http1: h1.hist.summary(),
            http2_per_second: h2_rate,
            http2: h2.hist.summary(),
            http1_over_sdk: h1_rate / sdk_rate.max(1e-9),
            http2_over_sdk: h2_rate / sdk_rate.max(1e-9),
            rest_cpu_us_http1: cpu_per(middle.cpu.saturating_sub(before.cpu), &h1),
            rest_cpu_us_http2: cpu_per(after.cpu.saturating_sub(middle.cpu), &h2),
            errors: sdk.errors + h1.errors + h2.errors,
            first_error: sdk.first_error.or(h1.first_error).or(h2.first_error),
        })
    }

    async fn sdk_run(
        &self,
        callers: usize,
        warmup: Duration,
        run: Duration,
        max_ops: u64,
    ) -> anyhow::Result<crate::scenario::LoadOutcome> {
        let start = tokio::time::Instant::now();
        let sessions = Arc::new(self.sdk.clone());
        crate::scenario::load(
            callers,
            start + warmup,
            start + warmup + run,
            max_ops,
            move |n| {
                let sessions = sessions.clone();
                async move {
                    let message = format!("signature {n}");
                    let session = &sessions[n as usize % sessions.len()];
                    let sig = session.sign(LABEL, message.as_bytes()).await?;
                    ensure!(sig.len() == 64, "a P-256 signature is 64 bytes");
                    Ok(())
                }
            },
        )
        .await
    }

    async fn rest_run(
        &self,
        http: Http,
        callers: usize,
        warmup: Duration,
        run: Duration,
        max_ops: u64,
    ) -> anyhow::Result<crate::scenario::LoadOutcome> {
        // HTTP/1.1: a keep-alive connection per caller, handed out by the
        // caller's request number modulo the callers (each connection has
        // one request at a time: a Mutex). HTTP/2: one shared connection.
        let ones: Arc<Vec<tokio::sync::Mutex<Sender1>>> = Arc::new(match http {
            Http::One => {
                let mut v = Vec::new();
                for _ in 0..callers.max(1) {
                    v.push(tokio::sync::Mutex::new(self.connect1().await?));
                }
                v
            }
            Http::Two => Vec::new(),
        });
        let two: Option<Sender2> = match http {
            Http::Two => Some(self.connect2().await?),
            Http::One => None,
        };
        let path = format!("/v1/partitions/{PARTITION_HSM}/keys/{LABEL}/sign");
        let auth = format!("Bearer {}", self.token);
        let authority = self.addr.to_string();
        let start = tokio::time::Instant::now();
        crate::scenario::load(
            callers,
            start + warmup,
            start + warmup + run,
            max_ops,
            move |n| {
                let (ones, two) = (ones.clone(), two.clone());
                let (path, auth, authority) = (path.clone(), auth.clone(), authority.clone());
                async move {
                    let body = format!(
                        "{{\"data\":\"{}\"}}",
                        hsmgate_rest::keys::b64(format!("signature {n}").as_bytes())
                    );
                    let uri = match http {
                        Http::One => path,
                        Http::Two => format!("https://{authority}{path}"),
                    };
                    let request = http::Request::post(uri)
                        .header(http::header::HOST, &authority)
                        .header(http::header::AUTHORIZATION, auth)
                        .header(http::header::CONTENT_TYPE, "application/json")
                        .body(Full::new(Bytes::from(body)))?;
                    let response = match &two {
                        Some(sender) => sender.clone().send_request(request).await?,
                        None => {
                            let mut sender = ones[n as usize % ones.len()].lock().await;
                            sender.ready().await?;
                            sender.send_request(request).await?
                        }
                    };
                    let status = response.status();
                    let body = response.into_body().collect().await?.to_bytes();
                    ensure!(
                        status == 200,
                        "status {status}: {}",
                        String::from_utf8_lossy(&body)
                    );
                    ensure!(
                        body.len() == "{\"signature\":\"\"}".len() + 86,
                        "a 64-byte signature"
                    );
                    Ok(())
                }
            },
        )
        .await
    }

    async fn tls_stream(
        &self,
    ) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let name = rustls::pki_types::ServerName::from(self.addr.ip());
        Ok(tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await?)
    }

    async fn connect1(&self) -> anyhow::Result<Sender1> {
        let mut tls = (*self.tls).clone();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = tokio::net::TcpStream::connect(self.addr).await?;
        tcp.set_nodelay(true)?;
        let name = rustls::pki_types::ServerName::from(self.addr.ip());
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(sender)
    }

    async fn connect2(&self) -> anyhow::Result<Sender2> {
        let stream = self.tls_stream().await?;
        ensure!(
            stream.get_ref().1.alpn_protocol() == Some(b"h2"),
            "hsmgate-rest did not negotiate h2"
        );
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await?;
        tokio::spawn(conn);
        Ok(sender)
    }
}

/// Start hsmgate-rest and read its listening address from stdout.
fn spawn(bin: &Path, config: &Path) -> anyhow::Result<(Child, SocketAddr)> {
    use std::io::BufRead;
    let mut child = Command::new(bin)
        .arg("--config")
        .arg(config)
        // Its access log at info, one line per request as in production,
        // written to nowhere.
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = std::io::BufReader::new(stdout).lines();
    let mut addr = None;
    // The child prints its addresses, then "ready"; bounded by its lines.
    for _ in 0..16 {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(a) = line.strip_prefix("listening bench https://") {
            addr = a.trim().parse().ok();
        }
        if line.contains("ready") {
            break;
        }
    }
    match addr {
        Some(addr) => Ok((child, addr)),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{} did not say where it listens", bin.display())
        }
    }
}

/// hsmgate-rest next to this program, if built.
pub fn binary() -> Option<PathBuf> {
    let bin = std::env::current_exe().ok()?.with_file_name("hsmgate-rest");
    bin.is_file().then_some(bin)
}
