//! A job as several processes of `auction_windows` on loopback "hosts" (127.0.0.1, .2, .3), each
//! with its own state directory, log and control endpoint: start, kill one, wait for all.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{example, free_port};

/// The processes of one run of the job.
pub struct Cluster {
    pub procs: Vec<std::process::Child>,
    logs: Vec<PathBuf>,
    /// Each process's control endpoint.
    pub control: Vec<String>,
}

impl Cluster {
    /// Starts `n` processes of `auction_windows` with `args`; `crash` names a crash point
    /// (`point:checkpoint`) for one process.
    pub fn start(
        n: usize,
        args: &[String],
        run_dir: &Path,
        env: &[(String, String)],
        crash: Option<(usize, String)>,
    ) -> Self {
        let crash: Vec<(usize, &str, &str)> =
            crash.iter().map(|(p, point)| (*p, "WEIR_CRASH_AT", point.as_str())).collect();
        Self::start_job("auction_windows", n, args, run_dir, env, &crash)
    }

    /// Starts `n` processes of the example `job` with `args`; `only` sets an environment
    /// variable in one process each `(process, name, value)`.
    pub fn start_job(
        job: &str,
        n: usize,
        args: &[String],
        run_dir: &Path,
        env: &[(String, String)],
        only: &[(usize, &str, &str)],
    ) -> Self {
        Self::start_via(job, n, args, run_dir, env, only, &|_, _, addr| addr.to_string())
    }

    /// [`Cluster::start_job`], where process `i` reaches process `j` (listening on `addr`) at
    /// `route(i, j, addr)`: a test puts a link it can cut in between.
    pub fn start_via(
        job: &str,
        n: usize,
        args: &[String],
        run_dir: &Path,
        env: &[(String, String)],
        only: &[(usize, &str, &str)],
        route: &dyn Fn(usize, usize, &str) -> String,
    ) -> Self {
        let hosts = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];
        let listen: Vec<String> = (0..n).map(|i| format!("{}:{}", hosts[i % 3], free_port())).collect();
        std::fs::create_dir_all(run_dir).unwrap();
        let mut procs = Vec::new();
        let mut logs = Vec::new();
        let mut control = Vec::new();
        for i in 0..n {
            let addr = format!("127.0.0.1:{}", free_port());
            let log = run_dir.join(format!("process-{i}.log"));
            let mut cmd = Command::new(example(job));
            cmd.args(args)
                .args(["--processes", &n.to_string(), "--process-index", &i.to_string(), "--listen", &listen[i]])
                .args(["--peers", &(0..n).map(|j| route(i, j, &listen[j])).collect::<Vec<_>>().join(",")])
                .args(["--state-dir", run_dir.join(format!("state-{i}")).to_str().unwrap()])
                .args(["--peer-timeout", "5s", "--connect-timeout", "10s", "--metrics-addr", &addr])
                .envs(env.iter().cloned())
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap());
            for (_, name, value) in only.iter().filter(|(p, _, _)| *p == i) {
                cmd.env(name, value);
            }
            procs.push(cmd.spawn().expect("starting a process of the job"));
            logs.push(log);
            control.push(addr);
        }
        Cluster { procs, logs, control }
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.logs[i]).unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        (0..self.procs.len()).map(|i| format!("--- process {i}:\n{}", self.log(i))).collect()
    }

    /// Waits for process `i` to end (at most `limit`).
    pub fn wait_for(&mut self, i: usize, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.procs[i].try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "process {i} still runs after {limit:?}:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for every process to end (at most `limit`), returning their statuses.
    pub fn wait(&mut self, limit: Duration) -> Vec<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        let mut out = vec![None; self.procs.len()];
        while out.iter().any(Option::is_none) {
            for (i, p) in self.procs.iter_mut().enumerate() {
                if out[i].is_none() {
                    out[i] = p.try_wait().unwrap();
                }
            }
            if Instant::now() > deadline {
                let logs = self.logs();
                self.procs.iter_mut().for_each(|p| drop(p.kill()));
                panic!("the processes did not all end within {limit:?}: {out:?}\n{logs}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        out.into_iter().map(Option::unwrap).collect()
    }

    /// SIGKILLs process `victim` and checks that every other one fails on its own; returns how
    /// long they took. A process that never heard of the victim (killed while the processes
    /// were still connecting) gives up after `--connect-timeout`.
    pub fn kill_one(&mut self, victim: usize) -> Duration {
        let _ = self.procs[victim].kill();
        let killed = Instant::now();
        let statuses = self.wait(Duration::from_secs(40));
        let took = killed.elapsed();
        for (i, s) in statuses.iter().enumerate() {
            if i == victim || s.signal() == Some(9) {
                continue;
            }
            // It may have finished just before the kill; otherwise it failed because of it.
            let log = self.log(i);
            assert!(
                s.success() || log.contains("lost the connection to process") || log.contains("was reachable within"),
                "process {i} ended with {s:?} without naming the lost peer:\n{log}"
            );
        }
        took
    }
}
