//! The embedded default PostgreSQL (README, "Configuration"). When run as root (as on the project's
//! machines) these exercise the privilege drop to the `postgres`/`nobody` account.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Instant;

use sqlx::{Connection, PgConnection};
use stepwise::embedded_pg::{
    ensure_database_exists, resolve_database, EmbeddedError, EmbeddedPostgres,
};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

async fn select_one(url: &str) -> i32 {
    let mut conn = PgConnection::connect(url).await.expect("connect");
    let one: i32 = sqlx::query_scalar("select 1")
        .fetch_one(&mut conn)
        .await
        .expect("select 1");
    conn.close().await.expect("close");
    one
}

async fn answers(url: &str) -> bool {
    match PgConnection::connect(url).await {
        Ok(conn) => {
            let _ = conn.close().await;
            true
        }
        Err(_) => false,
    }
}

/// Clusters of a root-run test live outside the temporary home; remove them too.
fn remove_cluster(home: &Path, cluster: &Path) {
    if !cluster.starts_with(home) && cluster.starts_with("/var") {
        let _ = fs::remove_dir_all(cluster);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_then_reuses_the_cluster_and_survives_a_stale_pid_file() {
    // A private home (like /root/.stepwise): as root, an unprivileged account can not reach it.
    let home = tempfile::tempdir().expect("tempdir");
    fs::set_permissions(home.path(), fs::Permissions::from_mode(0o700)).expect("chmod");
    let pg = EmbeddedPostgres::start(home.path())
        .await
        .expect("first start");
    assert!(pg.started_here());
    assert_eq!(select_one(&pg.url("postgres")).await, 1);

    let mut conn = PgConnection::connect(&pg.url("postgres"))
        .await
        .expect("connect");
    sqlx::raw_sql("create table kept (v int); insert into kept values (42)")
        .execute(&mut conn)
        .await
        .expect("write");
    conn.close().await.expect("close");

    let cluster = pg.cluster_dir().to_path_buf();
    let data = pg.data_dir().to_path_buf();
    if is_root() {
        let owner = fs::metadata(&data).expect("data dir").uid();
        assert_ne!(
            owner, 0,
            "the cluster must belong to an unprivileged account"
        );
        let link = home.path().join("pg");
        assert!(
            fs::symlink_metadata(&link)
                .expect("pg link")
                .file_type()
                .is_symlink(),
            "an unreachable home gets a link to the cluster"
        );
        assert_eq!(
            fs::canonicalize(&link).expect("resolve link"),
            cluster,
            "the link points at the cluster"
        );
    } else {
        assert!(cluster.starts_with(fs::canonicalize(home.path()).expect("home")));
    }

    let first_url = pg.url("postgres");
    pg.shutdown().await.expect("shutdown");
    assert!(!data.join("postmaster.pid").exists());
    assert!(!answers(&first_url).await, "the server must be stopped");

    // A crashed run could leave a postmaster.pid naming a pid that now belongs to another process.
    fs::write(
        data.join("postmaster.pid"),
        format!("1\n{}\n0\n1\n\n127.0.0.1\n0 0\nready\n", data.display()),
    )
    .expect("forge a stale postmaster.pid");

    let started = Instant::now();
    let pg = EmbeddedPostgres::start(home.path())
        .await
        .expect("second start");
    let second_start = started.elapsed();
    assert!(pg.started_here());
    assert_eq!(pg.cluster_dir(), cluster, "same cluster");
    let mut conn = PgConnection::connect(&pg.url("postgres"))
        .await
        .expect("connect again");
    let kept: i32 = sqlx::query_scalar("select v from kept")
        .fetch_one(&mut conn)
        .await
        .expect("the data of the first run is still there");
    assert_eq!(kept, 42);
    conn.close().await.expect("close");
    assert!(
        second_start.as_secs() < 10,
        "a second start reuses the cluster ({second_start:?})"
    );
    pg.shutdown().await.expect("second shutdown");
    remove_cluster(home.path(), &cluster);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_joins_the_running_server_and_resolve_honours_database_url() {
    // A home the unprivileged account can reach keeps the cluster in $STEPWISE_HOME/pg itself.
    let home = tempfile::tempdir().expect("tempdir");
    fs::set_permissions(home.path(), fs::Permissions::from_mode(0o755)).expect("chmod");

    let first = EmbeddedPostgres::start(home.path()).await.expect("start");
    let second = EmbeddedPostgres::start(home.path()).await.expect("join");
    assert_eq!(first.port(), second.port(), "the running server is reused");
    assert!(first.started_here());
    assert!(!second.started_here());
    let cluster = first.cluster_dir().to_path_buf();
    assert_eq!(
        cluster,
        fs::canonicalize(home.path()).expect("home").join("pg"),
        "a reachable home holds the cluster"
    );
    if is_root() {
        assert_ne!(fs::metadata(&cluster).expect("cluster").uid(), 0);
    }

    // DATABASE_URL wins, and its database is created when missing.
    let url = second.url("stepwise_resolve_probe");
    std::env::set_var("DATABASE_URL", &url);
    let target = resolve_database().await;
    std::env::remove_var("DATABASE_URL");
    let target = target.expect("resolve");
    assert_eq!(target.url, url);
    assert!(target.embedded.is_none());
    let mut conn = PgConnection::connect(&url).await.expect("connect");
    let db: String = sqlx::query_scalar("select current_database()")
        .fetch_one(&mut conn)
        .await
        .expect("current_database");
    assert_eq!(db, "stepwise_resolve_probe");
    conn.close().await.expect("close");

    // Two processes creating the same database at once both succeed.
    let race = second.url("stepwise_race");
    let (a, b) = tokio::join!(ensure_database_exists(&race), ensure_database_exists(&race));
    a.expect("first creator");
    b.expect("second creator");
    assert_eq!(select_one(&race).await, 1);

    // The first user leaves: the server stays up for the second one.
    first.shutdown().await.expect("first leaves");
    assert_eq!(select_one(&second.url("postgres")).await, 1);
    let url = second.url("postgres");
    second.shutdown().await.expect("last one stops it");
    assert!(!answers(&url).await, "the last user stops the server");
}

#[tokio::test]
async fn a_malformed_database_url_is_reported() {
    let err = ensure_database_exists("not a url")
        .await
        .expect_err("must fail");
    assert!(matches!(err, EmbeddedError::InvalidUrl(_)), "{err}");
    assert_eq!(err.exit_code(), 1);
}

// Trust authentication is only as safe as the way in: the embedded server listens on no TCP
// address (any local user could log in as `postgres` there), only on a Unix socket in a
// directory nobody but its owner may enter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_can_reach_the_embedded_server_no_tcp_and_a_private_socket() {
    let home = tempfile::tempdir().expect("tempdir");
    fs::set_permissions(home.path(), fs::Permissions::from_mode(0o700)).expect("chmod");
    let pg = EmbeddedPostgres::start(home.path()).await.expect("start");
    let url = pg.url("postgres");
    assert!(url.contains("?host=%2F"), "{url}");
    assert_eq!(select_one(&url).await, 1);

    let tcp = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port());
    assert!(
        !answers(&tcp).await,
        "nothing listens on 127.0.0.1:{}",
        pg.port()
    );
    let socket_dir = pg.socket_dir().to_path_buf();
    let meta = fs::metadata(&socket_dir).expect("socket dir");
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o700,
        "{}",
        socket_dir.display()
    );
    assert!(socket_dir.join(format!(".s.PGSQL.{}", pg.port())).exists());

    let cluster = pg.cluster_dir().to_path_buf();
    pg.shutdown().await.expect("shutdown");
    remove_cluster(home.path(), &cluster);
}
