//! One worker process: opens its share of the sessions (one task each, setups bounded by a
//! semaphore), keeps them alive, and runs each action the orchestrator starts, reporting per phase.
//!
//! Every session that came up stays a task until `End`, also if its connection died: it then
//! reports itself lost in each later phase, so each phase's report covers every session.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant as TInstant;
use tunnel_client::packet::{parse_reply, Probe, ProbeBuilder, ProbeKind};
use tunnel_client::tls::{ClientCert, Verify};
use tunnel_client::{
    ClientError, Credentials, DtlsStats, DtlsStatus, Endpoint, Established, SetupTimings, Tunnel,
};
use tunnel_proto::cstp::FrameType;

use crate::hist::Hist;
use crate::spec::{Action, ActionReport, ConnectReport, Msg, StormMode, WorkerSpec};

/// How long a session waits for its verification probe's reply.
const VERIFY_WAIT: Duration = Duration::from_secs(5);
/// How long a phase waits for replies still in flight after it stops sending.
const GRACE: Duration = Duration::from_secs(3);
/// How long a logout waits for the server to close the connection.
const LOGOUT_WAIT: Duration = Duration::from_secs(5);

/// Writes one message line on stdout.
fn emit(msg: &Msg) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, msg);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

/// Raises the soft open-files limit to the hard one (each session is one socket).
#[allow(unsafe_code)]
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the rlimit struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Runs a worker to the end of its `End` action (or until stdin closes).
pub(crate) fn run(spec: WorkerSpec) -> Result<()> {
    raise_nofile();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the worker runtime")?;
    let r = rt.block_on(main(spec));
    if let Err(e) = &r {
        emit(&Msg::Fatal {
            error: format!("{e:#}"),
        });
    }
    // Session tasks may still hold sockets: don't wait for them.
    rt.shutdown_background();
    r
}

struct Ctx {
    spec: WorkerSpec,
    ep: Endpoint,
    /// With `--cert-dir`: one endpoint per user (its client certificate), by user number.
    cert_eps: Vec<Endpoint>,
    creds: Credentials,
    base: Instant,
}

impl Ctx {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn source(&self, idx: u32) -> Option<IpAddr> {
        let n = self.spec.sources.len();
        (n > 0)
            .then(|| self.spec.sources.get(idx as usize % n).copied())
            .flatten()
    }

    /// The credentials of session `idx` (its own user with `--user-count`).
    fn creds(&self, idx: u32) -> Credentials {
        let mut c = self.creds.clone();
        if self.spec.user_count > 0 {
            c.username = user_name(&self.spec, idx % self.spec.user_count);
        }
        c
    }

    /// The endpoint of session `idx`: its user's client certificate with `--cert-dir`.
    fn ep(&self, idx: u32) -> &Endpoint {
        let user = idx.checked_rem(self.spec.user_count).unwrap_or(0);
        self.cert_eps.get(user as usize).unwrap_or(&self.ep)
    }

    fn probe_kind(&self, idx: u32) -> ProbeKind {
        match self.spec.udp_port {
            Some(port) => ProbeKind::Udp {
                src_port: 10_000 + (idx % 50_000) as u16,
                dst_port: port,
            },
            None => ProbeKind::IcmpEcho,
        }
    }
}

/// A setup that worked: its timings and its DTLS outcome (label, and the failure's text).
struct SetupOk {
    timings: SetupTimings,
    dtls: Option<(&'static str, Option<String>)>,
}

enum Ev {
    Setup(Result<SetupOk, (&'static str, String)>),
    Verified(bool),
    Report(Box<SessionReport>),
}

/// One session's part of a phase.
#[derive(Default)]
struct SessionReport {
    took_part: bool,
    died: Option<(&'static str, String)>,
    sent: u64,
    received: u64,
    bytes_sent: u64,
    bytes_received: u64,
    rtt: Hist,
    pushed_bytes: Option<u64>,
    elapsed: Duration,
    keepalives: u64,
    dpd_sent: u64,
    dpd_answered: u64,
    recovered: Option<Duration>,
    address_changed: bool,
    logout_failed: bool,
    dtls: DtlsStats,
    dtls_state: Option<&'static str>,
}

/// The username of user number `n`: `<user><n>` with `--user-count`, else `--user`.
fn user_name(spec: &WorkerSpec, n: u32) -> String {
    if spec.user_count > 0 {
        format!("{}{n}", spec.user)
    } else {
        spec.user.clone()
    }
}

/// One endpoint per user, each presenting `<dir>/<username>.pem` and `.key`.
fn cert_endpoints(
    spec: &WorkerSpec,
    dir: &std::path::Path,
    base: &Endpoint,
    verify: &Verify,
) -> Result<Vec<Endpoint>> {
    (0..spec.user_count.max(1))
        .map(|n| {
            let name = user_name(spec, n);
            let (cert, key) = (
                dir.join(format!("{name}.pem")),
                dir.join(format!("{name}.key")),
            );
            let c = ClientCert::load_pem(&cert, &key)
                .with_context(|| format!("client certificate of {name}"))?;
            base.clone()
                .with_client_cert(verify.clone(), &c)
                .with_context(|| format!("TLS client configuration with the certificate of {name}"))
        })
        .collect()
}

async fn main(spec: WorkerSpec) -> Result<()> {
    let verify = match &spec.pin {
        Some(p) => Verify::Pin(p.clone()),
        None => Verify::Insecure,
    };
    let mut ep = Endpoint::new(spec.server, verify.clone()).context("TLS client configuration")?;
    ep.setup_timeout = Duration::from_secs(spec.setup_timeout_s.max(1));
    ep.dtls = spec.dtls;
    ep.dtls_handshake_timeout = Duration::from_secs(spec.dtls_timeout_s.max(1));
    ep.dtls_retry = (spec.dtls_retry_s > 0).then(|| Duration::from_secs(spec.dtls_retry_s));
    // Certificate endpoints are copies of `ep`: they carry its DTLS settings.
    let cert_eps = match &spec.cert_dir {
        Some(dir) => cert_endpoints(&spec, dir, &ep, &verify)?,
        None => Vec::new(),
    };
    let ctx = Arc::new(Ctx {
        cert_eps,
        creds: Credentials {
            username: spec.user.clone(),
            password: spec.password.clone(),
            group: spec.group.clone(),
        },
        ep,
        base: Instant::now(),
        spec,
    });
    let n = ctx.spec.sessions;
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<Ev>();
    let (phase_tx, phase_rx) = watch::channel::<Option<Action>>(None);
    let sem = Arc::new(Semaphore::new(ctx.spec.concurrency.max(1) as usize));

    // Actions from the orchestrator, read on a plain thread (stdin is blocking).
    let (act_tx, mut act_rx) = mpsc::unbounded_channel::<Action>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<Action>(&line) {
                Ok(a) => {
                    if act_tx.send(a).is_err() {
                        break;
                    }
                }
                Err(e) => eprintln!("tunnel-bench worker: bad action {line:?}: {e}"),
            }
        }
    });

    let started = Instant::now();
    for i in 0..n {
        let idx = ctx.spec.first_session + i;
        tokio::spawn(session(
            Arc::clone(&ctx),
            idx,
            Arc::clone(&sem),
            ev_tx.clone(),
            phase_rx.clone(),
        ));
    }
    drop(ev_tx);

    // Connect phase.
    let mut rep = ConnectReport {
        attempted: u64::from(n),
        ..ConnectReport::default()
    };
    let mut setups = 0u64;
    let mut verifies = 0u64;
    let mut last_setup = started;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    while setups < rep.attempted || (ctx.spec.verify && verifies < rep.up) {
        tokio::select! {
            ev = ev_rx.recv() => match ev {
                Some(Ev::Setup(Ok(SetupOk { timings: t, dtls }))) => {
                    setups += 1;
                    if let Some((label, text)) = dtls {
                        *rep.dtls.entry(label.to_owned()).or_insert(0) += 1;
                        rep.dtls_up += u64::from(label == "up");
                        if let Some(text) = text {
                            rep.dtls_examples.entry(label.to_owned()).or_insert(text);
                        }
                        rep.dtls_time.record(u64::try_from(t.dtls.as_micros()).unwrap_or(u64::MAX));
                    }
                    rep.up += 1;
                    last_setup = Instant::now();
                    let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
                    rep.setup.record(us(t.total()));
                    rep.tcp.record(us(t.tcp));
                    rep.tls.record(us(t.tls));
                    rep.auth.record(us(t.auth));
                    rep.connect.record(us(t.connect));
                }
                Some(Ev::Setup(Err((reason, text)))) => {
                    setups += 1;
                    last_setup = Instant::now();
                    *rep.failed.entry(reason.to_owned()).or_insert(0) += 1;
                    rep.examples.entry(reason.to_owned()).or_insert(text);
                }
                Some(Ev::Verified(ok)) => {
                    verifies += 1;
                    rep.verify_sent += 1;
                    rep.verify_received += u64::from(ok);
                }
                Some(Ev::Report(_)) => {}
                None => break,
            },
            _ = tick.tick() => emit(&Msg::Progress { up: rep.up, failed: setups - rep.up }),
        }
    }
    rep.elapsed_s = (last_setup - started).as_secs_f64();
    let up = rep.up;
    emit(&Msg::Ready(rep));

    // Actions, one at a time, each reported by every session that came up.
    loop {
        let action = act_rx.recv().await.unwrap_or(Action::End);
        let end = action == Action::End;
        phase_tx.send_replace(Some(action));
        let mut agg = ActionReport::default();
        let mut reports = 0u64;
        while reports < up {
            match ev_rx.recv().await {
                Some(Ev::Report(r)) => {
                    reports += 1;
                    merge(&mut agg, &r);
                }
                Some(_) => {}
                None => break,
            }
        }
        emit(&Msg::Done(agg));
        if end {
            return Ok(());
        }
    }
}

fn merge(agg: &mut ActionReport, r: &SessionReport) {
    agg.sessions += u64::from(r.took_part);
    if let Some((reason, text)) = &r.died {
        *agg.lost.entry((*reason).to_owned()).or_insert(0) += 1;
        agg.examples
            .entry((*reason).to_owned())
            .or_insert_with(|| text.clone());
    }
    agg.sent += r.sent;
    agg.received += r.received;
    agg.bytes_sent += r.bytes_sent;
    agg.bytes_received += r.bytes_received;
    agg.rtt.merge(&r.rtt);
    if let Some(b) = r.pushed_bytes {
        agg.per_session_bytes.push(b);
    }
    agg.elapsed_s = agg.elapsed_s.max(r.elapsed.as_secs_f64());
    agg.keepalives += r.keepalives;
    agg.dpd_sent += r.dpd_sent;
    agg.dpd_answered += r.dpd_answered;
    if let Some(d) = r.recovered {
        agg.recovered += 1;
        agg.recovery
            .record(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }
    agg.address_changed += u64::from(r.address_changed);
    agg.logout_failed += u64::from(r.logout_failed);
    agg.dtls_sent += r.dtls.packets_sent;
    agg.dtls_received += r.dtls.packets_received;
    agg.dtls_keepalives += r.dtls.keepalives;
    agg.dtls_dpd_sent += r.dtls.dpd_sent;
    agg.dtls_dpd_answered += r.dtls.dpd_answered;
    agg.dtls_restarts += r.dtls.restarts;
    if let Some(label) = r.dtls_state {
        *agg.dtls.entry(label.to_owned()).or_insert(0) += 1;
    }
}

/// What changed in `now` since `before`.
fn stats_since(now: DtlsStats, before: DtlsStats) -> DtlsStats {
    DtlsStats {
        packets_sent: now.packets_sent.saturating_sub(before.packets_sent),
        packets_received: now.packets_received.saturating_sub(before.packets_received),
        keepalives: now.keepalives.saturating_sub(before.keepalives),
        dpd_sent: now.dpd_sent.saturating_sub(before.dpd_sent),
        dpd_answered: now.dpd_answered.saturating_sub(before.dpd_answered),
        restarts: now.restarts.saturating_sub(before.restarts),
    }
}

/// With DTLS asked for, waits for the new tunnel's DTLS outcome (part of the setup: its time
/// goes into the timings) and applies the keepalive/DPD overrides to it.
async fn settle_dtls(ctx: &Ctx, est: &mut Established) -> Result<(), ClientError> {
    if !ctx.spec.dtls {
        return Ok(());
    }
    let t = Instant::now();
    est.tunnel.wait_dtls().await?;
    est.timings.dtls = t.elapsed();
    let secs = |s: u32| Duration::from_secs(u64::from(s));
    let dtls = est.tunnel.reply().dtls.clone();
    let dpd = ctx.spec.dpd_s.or(dtls.as_ref().map(|d| d.dpd_secs));
    let ka = ctx
        .spec
        .keepalive_s
        .or(dtls.as_ref().map(|d| d.keepalive_secs));
    est.tunnel.set_dtls_timers(dpd.map(secs), ka.map(secs));
    Ok(())
}

/// The DTLS outcome of a tunnel for the connect report.
fn dtls_outcome(ctx: &Ctx, t: &Tunnel) -> Option<(&'static str, Option<String>)> {
    ctx.spec.dtls.then(|| {
        let s = t.dtls_status();
        let text = match s {
            DtlsStatus::Failed(f) => Some(f.to_string()),
            _ => None,
        };
        (s.label(), text)
    })
}

async fn session(
    ctx: Arc<Ctx>,
    idx: u32,
    sem: Arc<Semaphore>,
    ev: mpsc::UnboundedSender<Ev>,
    mut phase: watch::Receiver<Option<Action>>,
) {
    let source = ctx.source(idx);
    let setup = {
        let Ok(_permit) = sem.acquire().await else {
            return;
        };
        // Each step inside has its own deadlines; these bound each step whole, so a session
        // whose server stops answering is counted as failed (with its stage) instead of holding
        // the run.
        let ep = ctx.ep(idx);
        let creds = ctx.creds(idx);
        let connect =
            tokio::time::timeout(ep.setup_timeout, tunnel_client::connect(ep, &creds, source));
        match connect.await {
            Ok(Ok(mut est)) => {
                tokio::time::timeout(ep.dtls_handshake_timeout, settle_dtls(&ctx, &mut est))
                    .await
                    .unwrap_or(Err(ClientError::Timeout {
                        stage: "DTLS setup",
                    }))
                    .map(|()| est)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ClientError::Timeout {
                stage: "session setup",
            }),
        }
    };
    let est = match setup {
        Ok(e) => e,
        Err(e) => {
            let _ = ev.send(Ev::Setup(Err((e.reason(), e.to_string()))));
            return;
        }
    };
    let _ = ev.send(Ev::Setup(Ok(SetupOk {
        timings: est.timings,
        dtls: dtls_outcome(&ctx, &est.tunnel),
    })));
    let mut s = Live::new(Arc::clone(&ctx), idx, source, est.tunnel, est.cookie);
    if ctx.spec.verify {
        // probe_once waits VERIFY_WAIT for the answer; this bounds the sending around it too.
        let ok = tokio::time::timeout(2 * VERIFY_WAIT, s.probe_once(VERIFY_WAIT))
            .await
            .unwrap_or(false);
        let _ = ev.send(Ev::Verified(ok));
    }
    loop {
        let action = s.idle(&mut phase).await;
        let mut rep = match &action {
            Action::Hold { secs, trickle_ms } => s.hold(*secs, *trickle_ms).await,
            Action::Throughput {
                secs,
                sessions,
                window,
                size,
            } => {
                let local = idx - ctx.spec.first_session;
                if local < *sessions {
                    s.throughput(*secs, *window, *size).await
                } else {
                    s.hold(*secs, 0).await
                }
            }
            Action::Storm {
                mode,
                bounded,
                delay_ms,
            } => {
                let sem = bounded.then(|| Arc::clone(&sem));
                s.storm(*mode, sem, Duration::from_millis(*delay_ms)).await
            }
            Action::End => s.end().await,
        };
        if let (Some(d), None) = (&s.dead, &rep.died) {
            rep.died = Some(d.clone());
        }
        let _ = ev.send(Ev::Report(Box::new(rep)));
        if action == Action::End {
            return;
        }
    }
}

/// What woke a session up.
enum Wake {
    Io,
    Timer,
    Deadline,
    Phase,
}

/// A session after its setup.
struct Live {
    ctx: Arc<Ctx>,
    idx: u32,
    source: Option<IpAddr>,
    tunnel: Option<Tunnel>,
    cookie: String,
    addr: Ipv4Addr,
    dead: Option<(&'static str, String)>,
    probes: ProbeBuilder,
    seq: u64,
    /// Replies read but not yet counted by the running phase.
    inbox: Vec<Probe>,
    ka: Option<Duration>,
    dpd: Option<Duration>,
    next_ka: Option<TInstant>,
    next_dpd: Option<TInstant>,
    cur: SessionReport,
    /// The tunnel's DTLS counters when the phase started.
    dtls_base: DtlsStats,
}

async fn sleep_opt(t: Option<TInstant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn changed_opt(rx: Option<&mut watch::Receiver<Option<Action>>>) {
    match rx {
        Some(r) => {
            if r.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

impl Live {
    fn new(
        ctx: Arc<Ctx>,
        idx: u32,
        source: Option<IpAddr>,
        tunnel: Tunnel,
        cookie: String,
    ) -> Self {
        let addr = tunnel.ipv4().unwrap_or(Ipv4Addr::UNSPECIFIED);
        let pick = |over: Option<u32>, server: u32| {
            let s = over.unwrap_or(server);
            (s > 0).then(|| Duration::from_secs(u64::from(s)))
        };
        let ka = pick(ctx.spec.keepalive_s, tunnel.reply().keepalive_secs);
        let dpd = pick(ctx.spec.dpd_s, tunnel.reply().dpd_secs);
        let probes = ProbeBuilder::new(ctx.probe_kind(idx), addr, ctx.spec.target, idx, 100);
        let now = TInstant::now();
        let dtls_base = tunnel.dtls_stats();
        Self {
            idx,
            source,
            tunnel: Some(tunnel),
            cookie,
            addr,
            dead: None,
            probes,
            seq: 0,
            inbox: Vec::with_capacity(64),
            ka,
            dpd,
            next_ka: ka.map(|d| now + d),
            next_dpd: dpd.map(|d| now + d),
            cur: SessionReport::default(),
            dtls_base,
            ctx,
        }
    }

    fn die(&mut self, e: &ClientError) {
        if self.dead.is_none() {
            self.dead = Some((e.reason(), e.to_string()));
        }
        self.tunnel = None;
    }

    fn next_timer(&self) -> Option<TInstant> {
        match (self.next_ka, self.next_dpd) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Handles every buffered frame and due timer, and flushes what they queued.
    async fn service(&mut self) -> Result<(), ClientError> {
        let Some(t) = self.tunnel.as_mut() else {
            return Ok(());
        };
        while let Some(f) = t.next_frame()? {
            match f.kind {
                FrameType::Data => {
                    if let Some(p) = parse_reply(&f.payload, self.addr) {
                        if p.session == self.idx {
                            self.cur.bytes_received += f.payload.len() as u64;
                            self.inbox.push(p);
                        }
                    }
                }
                FrameType::DpdResponse => self.cur.dpd_answered += 1,
                _ => {}
            }
        }
        let now = TInstant::now();
        if let (Some(at), Some(every)) = (self.next_ka, self.ka) {
            if now >= at {
                t.queue(FrameType::Keepalive, &[])?;
                self.cur.keepalives += 1;
                self.next_ka = Some(now + every);
            }
        }
        if let (Some(at), Some(every)) = (self.next_dpd, self.dpd) {
            if now >= at {
                t.queue(FrameType::DpdRequest, &[])?;
                self.cur.dpd_sent += 1;
                self.next_dpd = Some(now + every);
            }
        }
        if t.has_pending() {
            t.flush().await?;
        }
        Ok(())
    }

    /// Waits for input, a keepalive/DPD timer, `deadline` or a phase change, then services the
    /// tunnel. A dead session just waits for the deadline or the phase change.
    async fn wait(
        &mut self,
        deadline: Option<TInstant>,
        phase: Option<&mut watch::Receiver<Option<Action>>>,
    ) -> Wake {
        // Send what is queued and take frames already read before sleeping.
        if let Err(e) = self.service().await {
            self.die(&e);
        }
        if !self.inbox.is_empty() {
            return Wake::Io;
        }
        let timer = self.next_timer();
        let wake = match self.tunnel.as_mut() {
            Some(t) => tokio::select! {
                r = t.read() => match r {
                    Ok(()) => Wake::Io,
                    Err(e) => { self.die(&e); return Wake::Io; }
                },
                () = sleep_opt(timer) => Wake::Timer,
                () = sleep_opt(deadline) => Wake::Deadline,
                () = changed_opt(phase) => Wake::Phase,
            },
            None => tokio::select! {
                () = sleep_opt(deadline) => Wake::Deadline,
                () = changed_opt(phase) => Wake::Phase,
            },
        };
        if let Err(e) = self.service().await {
            self.die(&e);
        }
        wake
    }

    /// Sends one probe now.
    fn send_probe(&mut self) -> Result<(), ClientError> {
        let now = self.ctx.now_ns();
        let Some(t) = self.tunnel.as_mut() else {
            return Ok(());
        };
        let pkt = self.probes.build(self.seq, now);
        t.queue_data(pkt)?;
        self.cur.sent += 1;
        self.cur.bytes_sent += pkt.len() as u64;
        self.seq += 1;
        Ok(())
    }

    /// Counts the replies in the inbox that belong to this phase (sequence >= `from`).
    fn count_replies(&mut self, from: u64) {
        let now = self.ctx.now_ns();
        for p in self.inbox.drain(..) {
            if p.seq >= from && p.seq < self.seq {
                self.cur.received += 1;
                self.cur.rtt.record(now.saturating_sub(p.sent_ns) / 1000);
            }
        }
    }

    /// Waits until every probe since `from` and every DPD request of this phase is answered, the
    /// session dies, or `GRACE` passes.
    async fn drain_replies(&mut self, from: u64) {
        let until = TInstant::now() + GRACE;
        while (self.cur.received < self.seq - from || self.cur.dpd_answered < self.cur.dpd_sent)
            && self.tunnel.is_some()
        {
            if let Wake::Deadline = self.wait(Some(until), None).await {
                self.count_replies(from);
                break;
            }
            self.count_replies(from);
        }
    }

    /// One probe and its reply within `wait`; the counts go to the current report.
    async fn probe_once(&mut self, wait: Duration) -> bool {
        let from = self.seq;
        let got_before = self.cur.received;
        if let Err(e) = self.send_probe() {
            self.die(&e);
            return false;
        }
        if let Err(e) = self.service().await {
            self.die(&e);
            return false;
        }
        let until = TInstant::now() + wait;
        while self.cur.received == got_before && self.tunnel.is_some() {
            if let Wake::Deadline = self.wait(Some(until), None).await {
                break;
            }
            self.count_replies(from);
        }
        self.count_replies(from);
        self.cur.received > got_before
    }

    /// Keeps the session alive between phases; returns the next action.
    async fn idle(&mut self, phase: &mut watch::Receiver<Option<Action>>) -> Action {
        loop {
            if let Wake::Phase = self.wait(None, Some(phase)).await {
                let a = phase.borrow_and_update().clone();
                if let Some(a) = a {
                    self.inbox.clear();
                    self.dtls_base = self
                        .tunnel
                        .as_ref()
                        .map(Tunnel::dtls_stats)
                        .unwrap_or_default();
                    self.cur = SessionReport {
                        took_part: true,
                        ..SessionReport::default()
                    };
                    return a;
                }
            }
            self.inbox.clear();
        }
    }

    fn take_report(&mut self) -> SessionReport {
        if let Some(t) = self.tunnel.as_ref() {
            self.cur.dtls = stats_since(t.dtls_stats(), self.dtls_base);
        }
        if self.ctx.spec.dtls {
            self.cur.dtls_state = Some(
                self.tunnel
                    .as_ref()
                    .map_or("session_lost", |t| t.dtls_status().label()),
            );
        }
        std::mem::take(&mut self.cur)
    }

    async fn hold(&mut self, secs: f64, trickle_ms: u64) -> SessionReport {
        let start = TInstant::now();
        let until = start + Duration::from_secs_f64(secs.max(0.0));
        let from = self.seq;
        let every = (trickle_ms > 0).then(|| Duration::from_millis(trickle_ms));
        // Spread the probes of all sessions over the interval.
        let mut next = every.map(|e| {
            start
                + Duration::from_micros(u64::from(self.idx) * 7919 % (e.as_micros() as u64).max(1))
        });
        while TInstant::now() < until && self.tunnel.is_some() {
            if let (Some(at), Some(e)) = (next, every) {
                if TInstant::now() >= at {
                    if let Err(e) = self.send_probe() {
                        self.die(&e);
                        break;
                    }
                    next = Some(at + e);
                }
            }
            let deadline = next.map_or(until, |n| n.min(until));
            self.wait(Some(deadline), None).await;
            self.count_replies(from);
        }
        self.cur.elapsed = start.elapsed();
        self.drain_replies(from).await;
        self.take_report()
    }

    async fn throughput(&mut self, secs: f64, window: u32, size: u32) -> SessionReport {
        // Never larger than the tunnel MTU the server announced (X-CSTP-MTU, which covers DTLS
        // too): a larger reply would reach the server fragmented, which no real client causes.
        let mtu = self.tunnel.as_ref().map_or(size, |t| t.reply().mtu);
        self.probes = ProbeBuilder::new(
            self.ctx.probe_kind(self.idx),
            self.addr,
            self.ctx.spec.target,
            self.idx,
            size.min(mtu) as usize,
        );
        let start = TInstant::now();
        let until = start + Duration::from_secs_f64(secs.max(0.0));
        let from = self.seq;
        let window = u64::from(window.max(1));
        while TInstant::now() < until && self.tunnel.is_some() {
            while self.tunnel.is_some() && (self.seq - from) - self.cur.received < window {
                if let Err(e) = self.send_probe() {
                    self.die(&e);
                    break;
                }
            }
            self.wait(Some(until), None).await;
            self.count_replies(from);
        }
        self.cur.elapsed = start.elapsed();
        self.drain_replies(from).await;
        self.cur.pushed_bytes = Some(self.cur.bytes_received);
        self.take_report()
    }

    async fn storm(
        &mut self,
        mode: StormMode,
        sem: Option<Arc<Semaphore>>,
        delay: Duration,
    ) -> SessionReport {
        let Some(tunnel) = self.tunnel.take() else {
            return self.take_report();
        };
        let prev = self.addr;
        let t0 = Instant::now();
        let up = match mode {
            StormMode::Cookie => {
                tunnel.abort();
                tokio::time::sleep(delay).await;
                let _permit = match &sem {
                    Some(s) => s.acquire().await.ok(),
                    None => None,
                };
                tunnel_client::reconnect(
                    self.ctx.ep(self.idx),
                    &self.cookie,
                    Some(prev),
                    self.source,
                )
                .await
            }
            StormMode::Reauth => {
                if let Err(e) = tunnel.logout(LOGOUT_WAIT).await {
                    self.die(&e);
                    return self.take_report();
                }
                tokio::time::sleep(delay).await;
                let _permit = match &sem {
                    Some(s) => s.acquire().await.ok(),
                    None => None,
                };
                tunnel_client::connect(
                    self.ctx.ep(self.idx),
                    &self.ctx.creds(self.idx),
                    self.source,
                )
                .await
            }
        };
        let up = match up {
            Ok(mut est) => settle_dtls(&self.ctx, &mut est).await.map(|()| est),
            Err(e) => Err(e),
        };
        match up {
            Ok(est) => {
                self.cur.recovered = Some(t0.elapsed());
                // A new tunnel: its DTLS counters start from zero.
                self.dtls_base = DtlsStats::default();
                self.addr = est.tunnel.ipv4().unwrap_or(Ipv4Addr::UNSPECIFIED);
                self.cur.address_changed = mode == StormMode::Cookie && self.addr != prev;
                self.probes = ProbeBuilder::new(
                    self.ctx.probe_kind(self.idx),
                    self.addr,
                    self.ctx.spec.target,
                    self.idx,
                    100,
                );
                self.cookie = est.cookie;
                self.tunnel = Some(est.tunnel);
                self.probe_once(VERIFY_WAIT).await;
            }
            Err(e) => self.die(&e),
        }
        self.take_report()
    }

    async fn end(&mut self) -> SessionReport {
        if let Some(t) = self.tunnel.take() {
            match t.logout(LOGOUT_WAIT).await {
                Ok(true) => {}
                Ok(false) | Err(_) => self.cur.logout_failed = true,
            }
        }
        self.take_report()
    }
}

/// Failure reasons summed over reports (used by the orchestrator).
pub(crate) fn add_counts(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_insert(0) += v;
    }
}
