//! A test introspection endpoint (RFC 7662) on 127.0.0.1: answers per token as the test sets
//! them, or misbehaves as asked, and records every call it got.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

/// How the endpoint answers.
#[derive(Clone, Debug)]
pub(crate) enum Mode {
    /// The answer set for the token, else `{"active": false}`.
    Normal,
    /// This status and body for every call.
    Raw(u16, String),
}

/// One call as the endpoint saw it.
#[derive(Clone, Debug)]
pub(crate) struct Call {
    pub authorization: Option<String>,
    pub form: HashMap<String, String>,
}

#[derive(Default)]
struct State {
    answers: Mutex<HashMap<String, Value>>,
    mode: Mutex<Option<Mode>>,
    delay: Mutex<Duration>,
    calls: Mutex<Vec<Call>>,
    count: AtomicUsize,
}

pub(crate) struct Endpoint {
    pub addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Endpoint {
    pub(crate) async fn start() -> Endpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let s = state.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let s = s.clone();
                conns.spawn(async move {
                    let svc = service_fn(move |req| serve(req, s.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Endpoint { addr, state, task }
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}/introspect", self.addr)
    }

    /// The answer for `token` from now on.
    pub(crate) fn set(&self, token: &str, answer: Value) {
        self.state
            .answers
            .lock()
            .unwrap()
            .insert(token.to_owned(), answer);
    }

    pub(crate) fn mode(&self, m: Mode) {
        *self.state.mode.lock().unwrap() = Some(m);
    }

    pub(crate) fn normal(&self) {
        *self.state.mode.lock().unwrap() = None;
    }

    /// Every answer waits this long first.
    pub(crate) fn delay(&self, d: Duration) {
        *self.state.delay.lock().unwrap() = d;
    }

    pub(crate) fn count(&self) -> usize {
        self.state.count.load(Ordering::SeqCst)
    }

    pub(crate) fn calls(&self) -> Vec<Call> {
        self.state.calls.lock().unwrap().clone()
    }

    /// Stops answering: the port is closed, and open connections with it.
    pub(crate) fn stop(&self) {
        self.task.abort();
    }
}

async fn serve(
    req: Request<Incoming>,
    s: Arc<State>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    s.count.fetch_add(1, Ordering::SeqCst);
    let authorization = req
        .headers()
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = req.into_body().collect().await?.to_bytes();
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    s.calls.lock().unwrap().push(Call {
        authorization,
        form: form.clone(),
    });
    let delay = *s.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mode = s.mode.lock().unwrap().clone().unwrap_or(Mode::Normal);
    let (status, body) = match mode {
        Mode::Raw(status, body) => (status, body),
        Mode::Normal => {
            let token = form.get("token").cloned().unwrap_or_default();
            let answer = s
                .answers
                .lock()
                .unwrap()
                .get(&token)
                .cloned()
                .unwrap_or(serde_json::json!({"active": false}));
            (200, answer.to_string())
        }
    };
    Ok(Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap())
}
