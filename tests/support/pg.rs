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

/// Drops database `name` on the server `admin` names, closing its connections.
pub async fn drop_database(admin: &str, name: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(admin)
        .await
        .expect("connect to the Postgres server");
    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .expect("drop database");
    let _ = conn.close().await;
}
