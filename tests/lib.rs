//! Support for herald's end-to-end tests: a database per test (SQLite file or
//! a fresh PostgreSQL database), the `herald` binary run as a child process,
//! and project directories written from strings.
//!
//! PostgreSQL: `HERALD_TEST_DATABASE_URL` (default: postgres on 127.0.0.1,
//! database `test`). When it cannot be reached, tests fail if
//! `HERALD_REQUIRE_POSTGRES=1` (CI) and otherwise skip with a loud message.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sea_orm::{ConnectionTrait, Database};

/// The tracking secret every `herald` this crate starts signs its tokens with.
pub const SECRET: &str = "e2e-secret-0123456789abcdef";

/// The PostgreSQL server tests create their databases on.
pub fn postgres_admin_url() -> String {
    std::env::var("HERALD_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test?sslmode=disable".into())
}

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file in the test's directory.
    Sqlite,
    /// A fresh PostgreSQL database.
    Postgres,
}

/// A database made for one test; a PostgreSQL one is dropped at the end.
pub struct TestDb {
    /// Its URL, for `--database`.
    pub url: String,
    pg_name: Option<String>,
}

impl TestDb {
    /// A new database of `backend`, or `None` (after a loud message) when PostgreSQL is
    /// unreachable and not required.
    pub async fn new(backend: Backend, dir: &Path) -> Option<TestDb> {
        match backend {
            Backend::Sqlite => Some(TestDb {
                url: format!("sqlite://{}?mode=rwc", dir.join("herald.db").display()),
                pg_name: None,
            }),
            Backend::Postgres => {
                let admin = postgres_admin_url();
                let conn = match Database::connect(&admin).await {
                    Ok(c) => c,
                    Err(e) => {
                        let required =
                            std::env::var("HERALD_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
                        assert!(
                            !required,
                            "PostgreSQL is required (HERALD_REQUIRE_POSTGRES=1) but {admin} is unreachable: {e}"
                        );
                        eprintln!(
                            "\n!!! SKIPPING the PostgreSQL half of this test: {admin} is unreachable ({e}).\n!!! Set HERALD_TEST_DATABASE_URL or start PostgreSQL to run it.\n"
                        );
                        return None;
                    }
                };
                let name = format!("herald_t_{}_{}", std::process::id(), rand_suffix());
                conn.execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .expect("create a test database");
                let url = replace_db_name(&admin, &name);
                Some(TestDb {
                    url,
                    pg_name: Some(name),
                })
            }
        }
    }

    /// Drops a PostgreSQL test database (best effort).
    pub async fn drop_db(self) {
        if let Some(name) = self.pg_name
            && let Ok(conn) = Database::connect(&postgres_admin_url()).await
        {
            let _ = conn
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await;
        }
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}_{nanos}", N.fetch_add(1, Ordering::Relaxed))
}

/// `url` with its database name replaced by `name`.
pub fn replace_db_name(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let cut = base.rfind('/').map_or(base.len(), |i| i + 1);
    let mut out = format!("{}{name}", &base[..cut]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// A project directory (config/, templates/) for one test.
pub struct Project {
    /// Its root; removed at the end of the test.
    pub dir: tempfile::TempDir,
    bin: PathBuf,
}

impl Project {
    /// An empty project run with the `herald` binary at `bin` (`env!("CARGO_BIN_EXE_herald")`).
    pub fn new(bin: impl Into<PathBuf>) -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
            bin: bin.into(),
        }
    }

    /// The root path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `text` at `rel` below the root.
    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, text).expect("write");
        p
    }

    /// Runs `herald ARGS` in the project against `db`, with a tracking secret set.
    pub fn herald(&self, db: &TestDb, args: &[&str]) -> Run {
        self.herald_with_env(db, args, &[])
    }

    /// [`Project::herald`] with extra environment variables (`RUST_LOG`).
    pub fn herald_with_env(&self, db: &TestDb, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = Command::new(&self.bin);
        cmd.current_dir(self.path())
            .env("HERALD_DATABASE_URL", &db.url)
            .env("HERALD_SECRET", SECRET)
            .env_remove("HERALD_CONFIG")
            .env_remove("HERALD_TEMPLATES")
            .envs(env.iter().copied())
            .args(args);
        // The test's own servers run on the runtime's other threads meanwhile.
        let out = match tokio::runtime::Handle::try_current() {
            Ok(_) => tokio::task::block_in_place(|| cmd.output()),
            Err(_) => cmd.output(),
        };
        Run(out.expect("run herald"))
    }
}

impl Project {
    /// Starts `herald ARGS` in the background (a daemon), its output in `NAME.out`/`NAME.err`.
    pub fn spawn(&self, db: &TestDb, name: &str, args: &[&str]) -> Daemon {
        self.spawn_with_env(db, name, args, &[])
    }

    /// [`Project::spawn`] with extra environment variables (provider secrets).
    pub fn spawn_with_env(
        &self,
        db: &TestDb,
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        let out = std::fs::File::create(self.path().join(format!("{name}.out"))).expect("out");
        let err = std::fs::File::create(self.path().join(format!("{name}.err"))).expect("err");
        Command::new(&self.bin)
            .current_dir(self.path())
            .env("HERALD_DATABASE_URL", &db.url)
            .env("HERALD_SECRET", SECRET)
            .env_remove("HERALD_CONFIG")
            .env_remove("HERALD_TEMPLATES")
            .envs(env.iter().copied())
            .args(args)
            .stdout(out)
            .stderr(err)
            .spawn()
            .map(Daemon)
            .expect("spawn herald")
    }

    /// What a background `herald` named `name` printed: (stdout, stderr).
    pub fn output_of(&self, name: &str) -> (String, String) {
        let read = |ext: &str| {
            std::fs::read_to_string(self.path().join(format!("{name}.{ext}"))).unwrap_or_default()
        };
        (read("out"), read("err"))
    }
}

/// A background `herald`: a [`std::process::Child`] that is killed when
/// dropped still running, so that a test that panics leaves no daemon behind
/// to send, hold ports or lock the database for the tests after it.
pub struct Daemon(std::process::Child);

impl std::ops::Deref for Daemon {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The result of one `herald` invocation.
pub struct Run(pub Output);

impl Run {
    /// Exit code.
    pub fn code(&self) -> i32 {
        self.0.status.code().unwrap_or(-1)
    }
    /// Standard output.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    /// Standard error.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
    /// Asserts exit code `code`, showing both streams otherwise.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code(),
            code,
            "exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout(),
            self.stderr()
        );
        self
    }
}
