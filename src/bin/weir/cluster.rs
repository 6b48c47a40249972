//! `weir cluster run`: starts one job as N processes on this machine and stops them together,
//! for development and tests (Kubernetes does this in production; see `examples/kubernetes/`).

use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How to start the processes.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Processes to start.
    #[arg(long, value_parser = clap::value_parser!(u32).range(2..=64))]
    processes: u32,
    /// Address of process i is `<host of i>:<base-port + i>`.
    #[arg(long, default_value_t = 17070)]
    base_port: u16,
    /// Hosts of the processes, comma-separated (e.g. 127.0.0.1,127.0.0.2 for one "machine"
    /// each on loopback); the last one is reused for the rest.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1")]
    hosts: Vec<String>,
    /// The job binary and its flags; `{i}` in a flag becomes the process index (e.g.
    /// `--state-dir /tmp/state-{i}`, `--metrics-addr 127.0.0.1:{9249+i}` is not supported: use
    /// `--metrics-addr 127.0.0.1:0`).
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// The peers flag value for `args`.
fn peers(args: &RunArgs) -> Vec<String> {
    (0..args.processes as usize)
        .map(|i| {
            let host = args.hosts.get(i).or(args.hosts.last()).map_or("127.0.0.1", String::as_str);
            format!("{host}:{}", args.base_port as usize + i)
        })
        .collect()
}

/// Starts the processes, waits for all, and fails if any did (after stopping the others).
pub fn run(args: &RunArgs) -> Result<()> {
    let peers = peers(args).join(",");
    let Some((program, flags)) = args.command.split_first() else { bail!("no job binary given") };
    let mut children: Vec<Child> = Vec::new();
    for i in 0..args.processes {
        let mut cmd = Command::new(program);
        cmd.args(flags.iter().map(|f| f.replace("{i}", &i.to_string())));
        cmd.arg("--processes").arg(args.processes.to_string());
        cmd.arg("--process-index").arg(i.to_string()).arg("--peers").arg(&peers);
        let child = cmd.spawn().with_context(|| format!("starting process {i}: {program}"))?;
        children.push(child);
    }
    eprintln!("weir cluster: {} processes of {program} on {peers}", args.processes);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let mut statuses: Vec<Option<ExitStatus>> = vec![None; children.len()];
    let mut forwarded = false;
    let mut failed_at: Option<Instant> = None;
    while statuses.iter().any(Option::is_none) {
        for (i, c) in children.iter_mut().enumerate() {
            if statuses[i].is_none() {
                statuses[i] = c.try_wait()?;
                if statuses[i].is_some_and(|s| !s.success()) && failed_at.is_none() {
                    eprintln!(
                        "weir cluster: process {i} failed ({}); the others stop",
                        statuses[i].unwrap_or_default()
                    );
                    failed_at = Some(Instant::now());
                }
            }
        }
        // A stop goes to process 0, the coordinator: it takes the final savepoint, and every
        // process ends with the job.
        if stop.load(std::sync::atomic::Ordering::Relaxed) && !forwarded {
            forwarded = true;
            // SAFETY: sending a signal to our own child process.
            unsafe { libc::kill(children[0].id() as i32, libc::SIGTERM) };
        }
        // The others fail on their own within seconds (fail-stop); kill stragglers.
        if failed_at.is_some_and(|t| t.elapsed() > Duration::from_secs(30)) {
            for (i, c) in children.iter_mut().enumerate() {
                if statuses[i].is_none() {
                    let _ = c.kill();
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match statuses.iter().position(|s| s.is_some_and(|s| !s.success())) {
        Some(i) => bail!("process {i} of the job failed"),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        run: RunArgs,
    }

    #[test]
    fn peers_follow_hosts_and_ports() {
        let t = T::parse_from(["t", "--processes", "3", "--hosts", "127.0.0.1,127.0.0.2", "--", "job"]);
        assert_eq!(peers(&t.run), ["127.0.0.1:17070", "127.0.0.2:17071", "127.0.0.2:17072"]);
    }
}
