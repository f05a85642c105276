//! A fresh Postgres database for a test or a benchmark.

/// Creates a new, empty database on the server `admin` names (its user must be allowed to
/// create databases); returns the database's name and URL.
pub async fn fresh_database(admin: &str, prefix: &str) -> (String, String) {
    use sqlx::Connection;
    let name = format!("{prefix}_{:016x}", rand::random::<u64>());
    let mut conn = sqlx::PgConnection::connect(admin)
        .await
        .expect("connect to the Postgres server");
    sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create database");
    let _ = conn.close().await;
    let (base, _) = admin.rsplit_once('/').expect("a URL with a database path");
    let url = format!("{base}/{name}");
    (name, url)
}

/// Drops database `name` on the server `admin` names, closing its connections. Best effort:
/// an autovacuum worker can hold the database for a moment, so it retries, and in the end
/// leaves the database to the next `.ci/postgres`, which drops leftovers.
pub async fn drop_database(admin: &str, name: &str) {
    use sqlx::Connection;
    let mut last_error = String::new();
    for _ in 0..10 {
        let result = async {
            let mut conn = sqlx::PgConnection::connect(admin).await?;
            sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut conn)
                .await?;
            conn.close().await
        }
        .await;
        match result {
            Ok(()) => return,
            Err(e) => last_error = e.to_string(),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    eprintln!("left database {name} behind: {last_error}");
}
