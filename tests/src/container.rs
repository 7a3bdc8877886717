//! The tunneld container image, built and run with Podman in a storage of the test's own.
//!
//! [`Podman::new`] makes a temporary directory with its own `storage.conf` (graph root, run root, the
//! `vfs` driver: no overlay mounts to leave behind) and `containers.conf` (`runc` with the `cgroupfs`
//! manager, which work on hosts with hybrid cgroups where `crun` refuses; no event log), and points
//! every podman call at them through `CONTAINERS_STORAGE_CONF` and `CONTAINERS_CONF`. Dropping it
//! removes every container and image in that storage, then the directory. Nothing touches the
//! host's own Podman storage.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use tempfile::TempDir;

use crate::gateway::tunneld_bin;
use crate::process::{self, Output};

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from(".."), Path::to_path_buf)
}

/// How long an image build may take (assembling the root filesystem and a `vfs` commit).
const BUILD_TIMEOUT: Duration = Duration::from_secs(300);

/// A Podman storage of the test's own; see the module docs.
#[derive(Debug)]
pub struct Podman {
    dir: TempDir,
}

impl Podman {
    /// Creates the storage and checks that podman answers.
    pub fn new() -> Result<Self> {
        ensure!(
            crate::topology::which("podman").is_some(),
            "the container tests need podman (and runc); scripts/test.sh installs them"
        );
        let dir = tempfile::Builder::new()
            .prefix("e2e-podman-")
            .tempdir()
            .context("creating the podman storage directory")?;
        let d = dir.path();
        for sub in ["graph", "run", "tmp", "volumes"] {
            fs::create_dir_all(d.join(sub))?;
        }
        fs::write(
            d.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                d.join("graph").display(),
                d.join("run").display()
            ),
        )?;
        fs::write(
            d.join("containers.conf"),
            format!(
                "[engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"none\"\n\
                 tmp_dir = \"{}\"\nvolume_path = \"{}\"\n",
                d.join("tmp").display(),
                d.join("volumes").display()
            ),
        )?;
        let podman = Self { dir };
        podman.run(&["info", "--format", "{{.Store.GraphDriverName}}"])?;
        Ok(podman)
    }

    /// A podman command using this storage.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new("podman");
        self.env(&mut cmd);
        cmd
    }

    /// The environment that points podman at this storage.
    pub fn env_vars(&self) -> [(&'static str, PathBuf); 2] {
        [
            (
                "CONTAINERS_STORAGE_CONF",
                self.dir.path().join("storage.conf"),
            ),
            ("CONTAINERS_CONF", self.dir.path().join("containers.conf")),
        ]
    }

    /// Points `cmd` (podman, or a script that calls it) at this storage.
    pub fn env(&self, cmd: &mut Command) {
        cmd.envs(self.env_vars());
    }

    /// Runs `podman args...`; fails unless it exits 0.
    pub fn run(&self, args: &[&str]) -> Result<Output> {
        let mut cmd = self.command();
        cmd.args(args);
        process::run(&mut cmd, None, Duration::from_secs(120))?.check()
    }

    /// Builds the image `tag` with deploy/build-image.sh from the tunneld and tunnelctl binaries the
    /// other end-to-end tests use (the debug build scripts/test.sh made; see tests/README.md).
    pub fn build_image(&self, tag: &str) -> Result<Output> {
        let bin = tunneld_bin()?;
        let bin_dir = bin.parent().context("tunneld has no directory")?;
        let mut cmd = Command::new("bash");
        cmd.arg(repo_root().join("deploy/build-image.sh"))
            .args(["--engine", "podman", "--tag", tag, "--bin-dir"])
            .arg(bin_dir);
        self.env(&mut cmd);
        process::run(&mut cmd, None, BUILD_TIMEOUT)?
            .check()
            .context("deploy/build-image.sh failed")
    }

    /// The image's file system, from `podman export` of a container created (never started) from
    /// it, unpacked into a directory of this storage.
    pub fn export_image(&self, tag: &str) -> Result<ImageFiles> {
        let id = self.run(&["create", tag])?.stdout.trim().to_string();
        let tar = self.dir.path().join("export.tar");
        let exported = self.run(&["export", "--output", &tar.display().to_string(), &id]);
        self.run(&["rm", "--force", &id])?;
        exported?;
        let root = self.dir.path().join("export");
        fs::create_dir_all(&root)?;
        process::run(
            Command::new("tar")
                .arg("-xf")
                .arg(&tar)
                .arg("-C")
                .arg(&root),
            None,
            Duration::from_secs(60),
        )?
        .check()?;
        fs::remove_file(&tar)?;
        let mut entries = Vec::new();
        walk(&root, &root, &mut entries)?;
        entries.sort();
        Ok(ImageFiles { root, entries })
    }

    /// `podman image inspect --format FORMAT tag`, trimmed.
    pub fn inspect_image(&self, tag: &str, format: &str) -> Result<String> {
        Ok(self
            .run(&["image", "inspect", "--format", format, tag])?
            .stdout
            .trim()
            .to_string())
    }

    /// The host pid of a running container's first process.
    pub fn container_pid(&self, name: &str) -> Result<u32> {
        let out = self.run(&["inspect", "--format", "{{.State.Pid}}", name])?;
        let pid: u32 = out
            .stdout
            .trim()
            .parse()
            .with_context(|| format!("container pid {:?}", out.stdout))?;
        if pid == 0 {
            bail!("container {name} is not running");
        }
        Ok(pid)
    }

    /// Removes the container `name` if it exists (stopping it with SIGKILL after `grace`).
    pub fn remove_container(&self, name: &str, grace: Duration) {
        let mut cmd = self.command();
        cmd.args([
            "rm",
            "--force",
            "--time",
            &grace.as_secs().to_string(),
            name,
        ]);
        let _ = process::run(&mut cmd, None, Duration::from_secs(60));
    }
}

/// An image's file system, unpacked.
#[derive(Debug)]
pub struct ImageFiles {
    /// Where it was unpacked.
    pub root: PathBuf,
    /// Every entry, relative (`usr/bin/tunneld`), with a kind suffix: `/` for directories, ` -> TARGET`
    /// for symlinks, nothing for regular files.
    pub entries: Vec<String>,
}

impl ImageFiles {
    /// The regular files, relative.
    pub fn files(&self) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|e| !e.ends_with('/') && !e.contains(" -> "))
            .map(String::as_str)
            .collect()
    }

    /// The text of a file in the image.
    pub fn read(&self, rel: &str) -> Result<String> {
        fs::read_to_string(self.root.join(rel))
            .with_context(|| format!("reading {rel} in the image"))
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let rel = path.strip_prefix(root)?.to_string_lossy().into_owned();
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            out.push(format!("{rel} -> {}", fs::read_link(&path)?.display()));
        } else if kind.is_dir() {
            out.push(format!("{rel}/"));
            walk(root, &path, out)?;
        } else {
            out.push(rel);
        }
    }
    Ok(())
}

impl Drop for Podman {
    fn drop(&mut self) {
        for args in [
            &["rm", "--all", "--force", "--time", "0"][..],
            &["rmi", "--all", "--force"][..],
        ] {
            let mut cmd = self.command();
            cmd.args(args);
            let _ = process::run(&mut cmd, None, Duration::from_secs(120));
        }
    }
}
