//! A throwaway database on the PostgreSQL server `--postgres` names.

use std::future::Future;

use sqlx::Connection;

/// Runs `work` with the URL of a new database `name` on `server_url`, then
/// drops the database (a failed drop is a warning).
pub async fn with_fresh_database<T, F, Fut>(
    server_url: &str,
    name: &str,
    work: F,
) -> Result<T, String>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let mut admin = sqlx::PgConnection::connect(server_url)
        .await
        .map_err(|err| format!("connect {server_url}: {err}"))?;
    let create = format!("CREATE DATABASE {name}");
    sqlx::raw_sql(&create)
        .execute(&mut admin)
        .await
        .map_err(|err| format!("{create}: {err}"))?;
    let mut url = url::Url::parse(server_url).map_err(|err| format!("--postgres: {err}"))?;
    url.set_path(name);
    let result = work(url.to_string()).await;
    let drop = format!("DROP DATABASE IF EXISTS {name}");
    if let Err(err) = sqlx::raw_sql(&drop).execute(&mut admin).await {
        eprintln!("warning: {drop}: {err}");
    }
    result
}
