//! Debian's `redis-server` on loopback ports with a temp dir (`.ci/run` installs it), and
//! bearward processes ("replicas"), each with a config file of its own.

use super::*;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};

/// One `redis-server`. The test itself speaks plain RESP on `port`; a TLS server listens on
/// `tls_port` as well, for bearward.
pub(crate) struct Redis {
    child: Child,
    pub port: u16,
    pub tls_port: Option<u16>,
    password: Option<String>,
    dir: std::path::PathBuf,
}

impl Redis {
    pub(crate) fn start() -> Redis {
        Redis::start_with(&[], None, false)
    }

    /// With `extra` arguments, a `password` (`requirepass`) and, with `tls`, a TLS port whose
    /// certificate is the test CA's `server.pem` (for 127.0.0.1 and localhost).
    pub(crate) fn start_with(extra: &[&str], password: Option<&str>, tls: bool) -> Redis {
        let dir = |port: u16| {
            std::env::temp_dir().join(format!("bearward-redis-{port}-{}", std::process::id()))
        };
        // A cluster node also listens on its bus port, port + 10000: a try whose bus port is
        // taken exits like one whose port is.
        let what = "redis-server (apt-get install redis-server; .ci/run does)";
        let start = |ports: &[u16]| {
            let dir = dir(ports[0]);
            std::fs::create_dir_all(&dir).unwrap();
            let mut cmd = Command::new("redis-server");
            cmd.args([
                "--port",
                &ports[0].to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ]);
            cmd.arg("--dir").arg(&dir);
            if let Some(p) = password {
                cmd.args(["--requirepass", p]);
            }
            if let Some(t) = ports.get(1) {
                let tls = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls");
                cmd.args(["--tls-port", &t.to_string()])
                    .arg("--tls-cert-file")
                    .arg(format!("{tls}/server.pem"))
                    .arg("--tls-key-file")
                    .arg(format!("{tls}/server-key.pem"))
                    .arg("--tls-ca-cert-file")
                    .arg(format!("{tls}/ca.pem"))
                    .args(["--tls-auth-clients", "optional"]);
            }
            // Last, so they can override the above (`--tls-auth-clients yes`).
            cmd.args(extra).stdout(Stdio::null()).stderr(Stdio::null());
            cmd
        };
        let (child, ports) = spawn_holding_n(what, 1 + usize::from(tls), start, |ports| {
            let _ = std::fs::remove_dir_all(dir(ports[0]));
        });
        let r = Redis {
            child,
            port: ports[0],
            tls_port: ports.get(1).copied(),
            password: password.map(str::to_owned),
            dir: dir(ports[0]),
        };
        for _ in 0..100 {
            if r.command("PING").as_deref() == Some("+PONG") {
                return r;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not answer PING");
    }

    /// One inline command; the first line of the reply.
    pub(crate) fn command(&self, cmd: &str) -> Option<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut buf = [0u8; 4096];
        if let Some(p) = &self.password {
            s.write_all(format!("AUTH {p}\r\n").as_bytes()).ok()?;
            let n = s.read(&mut buf).ok()?;
            assert!(buf[..n].starts_with(b"+OK"), "AUTH refused");
        }
        s.write_all(format!("{cmd}\r\n").as_bytes()).ok()?;
        let n = s.read(&mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        Some(text.lines().next().unwrap_or("").to_owned())
    }

    /// A new password for the server (and for the test's own commands).
    pub(crate) fn set_password(&mut self, password: &str) {
        let ok = self.command(&format!("CONFIG SET requirepass {password}"));
        assert_eq!(ok.as_deref(), Some("+OK"));
        self.password = Some(password.to_owned());
    }

    /// All keys, with their values, as one text (to look for what must not be there).
    pub(crate) fn dump(&self) -> String {
        let mut s = self.connect();
        s.write_all(b"KEYS *\r\n").unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            if out.ends_with(b"\r\n") {
                break;
            }
        }
        let keys = String::from_utf8_lossy(&out).into_owned();
        let mut all = keys.clone();
        for k in keys
            .lines()
            .filter(|l| !l.starts_with('*') && !l.starts_with('$'))
        {
            all.push_str(&self.get_value(k));
        }
        all
    }

    fn get_value(&self, key: &str) -> String {
        let mut s = self.connect();
        s.write_all(format!("GET {key}\r\n").as_bytes()).unwrap();
        let mut buf = [0u8; 65536];
        let n = s.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// A connection for the test's own commands, authenticated when the node asks for it.
    fn connect(&self) -> std::net::TcpStream {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        if let Some(p) = &self.password {
            s.write_all(format!("AUTH {p}\r\n").as_bytes()).unwrap();
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).unwrap_or(0);
            assert!(buf[..n].starts_with(b"+OK"), "AUTH refused");
        }
        s
    }

    pub(crate) fn kill(&mut self) {
        // A paused server would take its TERM only when continued.
        self.signal("-CONT");
        stop_group(&mut self.child);
    }

    /// Stops the server without closing anything (SIGSTOP): its connections stay open and go
    /// silent, as a partitioned or paused host's do.
    pub(crate) fn pause(&mut self) {
        self.signal("-STOP");
    }

    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A bearward process with its config in a temp file; its log in `log` when asked for.
pub(crate) struct Replica {
    child: Child,
    pub port: u16,
    pub admin: u16,
    pub file: std::path::PathBuf,
    pub log: Option<std::path::PathBuf>,
}

impl Replica {
    /// A replica running the config `text(port, admin)` gives.
    pub(crate) fn with(text: impl Fn(u16, u16) -> String) -> Replica {
        Replica::spawn(text, &[], false)
    }

    /// With environment variables `env` and, with `log`, its output kept in a file. Returns once
    /// the replica listens on both ports itself (another pair, and `text` again, when a test
    /// beside it took one: [`spawn_holding`]).
    pub(crate) fn spawn(
        text: impl Fn(u16, u16) -> String,
        env: &[(&str, &str)],
        log: bool,
    ) -> Replica {
        let file = |port: u16| {
            std::env::temp_dir().join(format!(
                "bearward-replica-{port}-{}.toml",
                std::process::id()
            ))
        };
        let start = |[port, admin]: [u16; 2]| {
            let file = file(port);
            std::fs::write(&file, text(port, admin)).unwrap();
            let (out, err) = match log {
                true => {
                    let l = std::fs::File::create(file.with_extension("log")).unwrap();
                    (Stdio::from(l.try_clone().unwrap()), Stdio::from(l))
                }
                false => (Stdio::null(), Stdio::null()),
            };
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_bearward"));
            // A machine's own proxy settings would send the test IdPs' loopback calls
            // elsewhere; a test that wants a proxy names it in `env`.
            for v in [
                "HTTP_PROXY",
                "HTTPS_PROXY",
                "ALL_PROXY",
                "NO_PROXY",
                "http_proxy",
                "https_proxy",
                "all_proxy",
                "no_proxy",
            ] {
                cmd.env_remove(v);
            }
            if log {
                cmd.env("RUST_LOG", "debug");
            }
            cmd.arg("--config")
                .arg(&file)
                .envs(env.iter().copied())
                .stdout(out)
                .stderr(err);
            cmd
        };
        let (child, [port, admin]) = spawn_holding_tidy("bearward", start, |[port, _]| {
            let _ = std::fs::remove_file(file(port));
            let _ = std::fs::remove_file(file(port).with_extension("log"));
        });
        let file = file(port);
        Replica {
            child,
            port,
            admin,
            log: log.then(|| file.with_extension("log")),
            file,
        }
    }

    pub(crate) async fn call(&self, c: &HttpClient, token: &str) -> StatusCode {
        get(
            c,
            &format!("http://127.0.0.1:{}/api/x", self.port),
            &[("authorization", &format!("Bearer {token}"))],
        )
        .await
        .status
    }

    pub(crate) async fn metrics(&self, c: &HttpClient) -> String {
        get(c, &format!("http://127.0.0.1:{}/metrics", self.admin), &[])
            .await
            .body
    }

    /// What it logged so far.
    pub(crate) fn logged(&self) -> String {
        self.log
            .as_ref()
            .map(|l| std::fs::read_to_string(l).unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.file);
        if let Some(l) = &self.log {
            let _ = std::fs::remove_file(l);
        }
    }
}

/// A Redis Cluster of three masters (no replicas) from Debian's `redis-server`, made with
/// `redis-cli --cluster create`. A master that dies leaves its slots unserved while the others
/// go on (`cluster-require-full-coverage no`).
pub(crate) struct Cluster {
    pub nodes: Vec<Redis>,
    slots: Vec<Vec<std::ops::RangeInclusive<u16>>>,
    dead: Vec<usize>,
}

impl Cluster {
    pub(crate) fn start() -> Cluster {
        let args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "1000",
            "--cluster-require-full-coverage",
            "no",
        ];
        let nodes: Vec<Redis> = (0..3)
            .map(|_| Redis::start_with(&args, None, false))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let mut c = Cluster {
            nodes,
            slots: Vec::new(),
            dead: Vec::new(),
        };
        for _ in 0..100 {
            if c.nodes
                .iter()
                .all(|n| n.cli(&["cluster", "info"]).contains("cluster_state:ok"))
            {
                c.slots = c.nodes.iter().map(Cluster::slot_ranges).collect();
                return c;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the cluster did not come up");
    }

    /// The `[cache]` line naming the seed nodes.
    pub(crate) fn cache(&self) -> String {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("\"redis://127.0.0.1:{}\"", n.port))
            .collect();
        format!("redis_cluster_urls = [{}]", urls.join(", "))
    }

    /// The node whose slots hold `key` (as the cluster was made: no slot moves here).
    pub(crate) fn owner(&self, key: &str) -> usize {
        let live = (0..self.nodes.len())
            .find(|i| !self.dead.contains(i))
            .unwrap();
        let slot: u16 = self.nodes[live]
            .cli(&["cluster", "keyslot", key])
            .trim()
            .parse()
            .unwrap();
        self.slots
            .iter()
            .position(|ranges| ranges.iter().any(|r| r.contains(&slot)))
            .expect("a node owns the slot")
    }

    /// Each node's slot ranges, from its own `CLUSTER NODES` line.
    fn slot_ranges(node: &Redis) -> Vec<std::ops::RangeInclusive<u16>> {
        node.cli(&["cluster", "nodes"])
            .lines()
            .find(|l| l.contains("myself"))
            .map(|l| {
                l.split(' ')
                    .skip(8)
                    .filter_map(|range| {
                        let (a, b) = range.split_once('-').unwrap_or((range, range));
                        Some(a.parse::<u16>().ok()?..=b.parse::<u16>().ok()?)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Kills the master that holds `key`; returns its index.
    pub(crate) fn kill_owner_of(&mut self, key: &str) -> usize {
        let i = self.owner(key);
        self.nodes[i].kill();
        self.dead.push(i);
        i
    }

    /// Is `key` on a master that was killed?
    pub(crate) fn is_down(&self, key: &str) -> bool {
        self.dead.contains(&self.owner(key))
    }

    /// Every live node's keys and values.
    pub(crate) fn dump(&self) -> String {
        (0..self.nodes.len())
            .filter(|i| !self.dead.contains(i))
            .map(|i| self.nodes[i].dump())
            .collect()
    }
}

impl Redis {
    /// `redis-cli` against this node; its output.
    pub(crate) fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A master and one replica (asking for `tests/fixtures/redis-password`) watched by one Redis
/// Sentinel (Debian's `redis-server --sentinel`, quorum 1, asking for
/// `tests/fixtures/sentinel-password`), monitoring the master as `mymaster`. A killed master is
/// declared down after 500 ms and the replica promoted. With `tls`, the sentinel listens on TLS
/// only and it, the replica and bearward reach the nodes on their TLS ports (the test CA's
/// `server.pem`); the test's own commands to the nodes stay plain.
pub(crate) struct Sentinels {
    /// `[0]` the master as started, `[1]` its replica.
    pub nodes: Vec<Redis>,
    child: Child,
    pub port: u16,
    tls: bool,
    dir: std::path::PathBuf,
}

const TLS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls");

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(path).unwrap().trim().to_owned()
}

impl Sentinels {
    pub(crate) fn start(tls: bool) -> Sentinels {
        let pw = fixture("redis-password");
        // A node's certificate is for serving: the replica shows the client one to its master.
        let client_cert = format!("{TLS_DIR}/client.pem");
        let client_key = format!("{TLS_DIR}/client-key.pem");
        let replication: &[&str] = if tls {
            &[
                "--tls-replication",
                "yes",
                "--tls-client-cert-file",
                &client_cert,
                "--tls-client-key-file",
                &client_key,
            ]
        } else {
            &[]
        };
        // No wait for more replicas before the first sync (Redis waits 5 s by default).
        let master = Redis::start_with(
            &[
                &["--masterauth", &pw, "--repl-diskless-sync-delay", "0"],
                replication,
            ]
            .concat(),
            Some(&pw),
            tls,
        );
        // What the sentinel and the replica reach the master on.
        let port = master.tls_port.unwrap_or(master.port).to_string();
        let replica = Redis::start_with(
            &[
                &["--replicaof", "127.0.0.1", &port, "--masterauth", &pw],
                replication,
            ]
            .concat(),
            Some(&pw),
            tls,
        );
        // The sentinel learns of the replica from the master's INFO: it must be attached by
        // then.
        let online = (0..200).any(|_| {
            let attached = master
                .cli_auth(&["info", "replication"])
                .contains("state=online");
            if !attached {
                std::thread::sleep(Duration::from_millis(50));
            }
            attached
        });
        assert!(online, "the replica did not attach to the master");
        let dir = |p: u16| {
            std::env::temp_dir().join(format!("bearward-sentinel-{p}-{}", std::process::id()))
        };
        let start = |[p]: [u16; 1]| {
            let dir = dir(p);
            std::fs::create_dir_all(&dir).unwrap();
            // Sentinel rewrites its config file as it learns: it gets a copy of its own.
            let conf = dir.join("sentinel.conf");
            let listen = if tls {
                format!(
                    "port 0\ntls-port {p}\ntls-cert-file {TLS_DIR}/server.pem\n\
                     tls-key-file {TLS_DIR}/server-key.pem\ntls-ca-cert-file {TLS_DIR}/ca.pem\n\
                     tls-auth-clients optional\ntls-replication yes\n\
                     tls-client-cert-file {TLS_DIR}/client.pem\n\
                     tls-client-key-file {TLS_DIR}/client-key.pem\n"
                )
            } else {
                format!("port {p}\n")
            };
            std::fs::write(
                &conf,
                format!(
                    "{listen}bind 127.0.0.1\ndir {}\nrequirepass {}\n\
                     sentinel monitor mymaster 127.0.0.1 {port} 1\n\
                     sentinel auth-pass mymaster {pw}\n\
                     sentinel down-after-milliseconds mymaster 500\n\
                     sentinel failover-timeout mymaster 2000\n",
                    dir.display(),
                    fixture("sentinel-password"),
                ),
            )
            .unwrap();
            let mut cmd = Command::new("redis-server");
            cmd.arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            cmd
        };
        let (child, [p]) = spawn_holding_tidy("redis-server --sentinel", start, |[p]| {
            let _ = std::fs::remove_dir_all(dir(p));
        });
        let s = Sentinels {
            nodes: vec![master, replica],
            child,
            port: p,
            tls,
            dir: dir(p),
        };
        let knows = (0..100).any(|_| {
            let replicas = s.ask(&["sentinel", "replicas", "mymaster"]);
            let found = replicas.contains(&s.reached_on(1).to_string());
            if !found {
                std::thread::sleep(Duration::from_millis(100));
            }
            found
        });
        assert!(knows, "the sentinel did not find the replica");
        s
    }

    /// `redis-cli` against the sentinel; its output.
    pub(crate) fn ask(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        if self.tls {
            cmd.arg("--tls")
                .arg("--cacert")
                .arg(format!("{TLS_DIR}/ca.pem"));
        }
        let out = cmd
            .args(["-p", &self.port.to_string(), "--no-auth-warning", "-a"])
            .arg(fixture("sentinel-password"))
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The port the sentinel, the replica and bearward reach node `i` on.
    fn reached_on(&self, i: usize) -> u16 {
        let n = &self.nodes[i];
        if self.tls {
            n.tls_port.unwrap()
        } else {
            n.port
        }
    }

    /// The index in `nodes` of the node the sentinel names master.
    pub(crate) fn master(&self) -> Option<usize> {
        let addr = self.ask(&["sentinel", "get-master-addr-by-name", "mymaster"]);
        let port: u16 = addr.lines().nth(1)?.trim().parse().ok()?;
        (0..self.nodes.len()).find(|i| self.reached_on(*i) == port)
    }

    /// The `[cache]` lines naming the sentinel, the master's name, both passwords and, with
    /// TLS, the CA.
    pub(crate) fn cache(&self) -> String {
        let (scheme, ca) = match self.tls {
            true => ("rediss", format!("\nredis_ca_file = \"{TLS_DIR}/ca.pem\"")),
            false => ("redis", String::new()),
        };
        format!(
            "redis_sentinel_urls = [\"{scheme}://127.0.0.1:{}\"]\n\
             redis_sentinel_master = \"mymaster\"\n\
             redis_password_file = \"tests/fixtures/redis-password\"\n\
             redis_sentinel_password_file = \"tests/fixtures/sentinel-password\"{ca}",
            self.port
        )
    }
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        stop_group(&mut self.child);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Redis {
    /// [`Redis::cli`] with the node's password.
    pub(crate) fn cli_auth(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-p", &self.port.to_string()]);
        if let Some(p) = &self.password {
            cmd.args(["--no-auth-warning", "-a", p]);
        }
        let out = cmd.args(args).output().expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
