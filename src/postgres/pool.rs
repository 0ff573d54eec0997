//! Connections: every connect bounded by a deadline of ours (the `postgres`
//! crate's `connect_timeout` covers the socket's connect, not the startup
//! exchange after it, which a server that accepts and never answers holds
//! for ever), the pool's manager built on that, and connection strings with
//! their passwords hidden for messages.

use std::collections::HashMap;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use postgres::types::{ToSql, Type};
use postgres::{Client, Row, Statement};

use crate::postgres::tls::Tls;
use r2d2_postgres::PostgresConnectionManager;

/// Why the pool could not open a connection (the error of
/// [`PgManager`]).
#[derive(Debug)]
#[non_exhaustive]
pub enum PgConnectError {
    /// The server (or the way to it) refused.
    Server(postgres::Error),
    /// Nothing came back within the deadline (a server that accepted the
    /// connection and never answered, or a network that swallows packets).
    Silent(Duration),
}

impl fmt::Display for PgConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PgConnectError::Server(e) => write!(f, "{e}"),
            PgConnectError::Silent(after) => write!(
                f,
                "the server did not complete the connection within {after:?} (it accepted it \
                 and stopped answering, or the network drops its packets)"
            ),
        }
    }
}

impl std::error::Error for PgConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PgConnectError::Server(e) => Some(e),
            PgConnectError::Silent(_) => None,
        }
    }
}

/// Runs `connect` on a thread of its own and waits at most `limit`; a
/// connect given up on goes on in that thread until the socket gives up
/// (then its connection, if any, is dropped).
pub(crate) fn within(
    limit: Duration,
    connect: impl FnOnce() -> Result<Client, postgres::Error> + Send + 'static,
) -> Result<Client, PgConnectError> {
    let (sent, answer) = std::sync::mpsc::sync_channel(1);
    let spawned = std::thread::Builder::new()
        .name("leasehold-pg-connect".into())
        .spawn(move || {
            let _ = sent.send(connect());
        });
    if spawned.is_err() {
        return Err(PgConnectError::Silent(Duration::ZERO));
    }
    match answer.recv_timeout(limit) {
        Ok(result) => result.map_err(PgConnectError::Server),
        Err(_) => Err(PgConnectError::Silent(limit)),
    }
}

/// `config`'s connect, bounded by `limit`.
pub(crate) fn connect(
    config: &postgres::Config,
    tls: &Tls,
    limit: Duration,
) -> Result<Client, PgConnectError> {
    let (config, tls) = (config.clone(), tls.clone());
    within(limit, move || config.connect(tls))
}

/// The engine pool's connection manager: `r2d2_postgres`'s, with each
/// connect (startup exchange included) bounded by the connect timeout plus
/// the busy timeout, so that a server that accepts connections and never
/// answers cannot hold a connect for ever.
pub struct PgManager {
    inner: Arc<PostgresConnectionManager<Tls>>,
    limit: Duration,
    prepare: bool,
}

impl fmt::Debug for PgManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgManager")
            .field("limit", &self.limit)
            .field("prepare", &self.prepare)
            .finish_non_exhaustive()
    }
}

impl PgManager {
    pub(crate) fn new(
        config: postgres::Config,
        tls: Tls,
        limit: Duration,
        prepare: bool,
    ) -> PgManager {
        PgManager {
            inner: Arc::new(PostgresConnectionManager::new(config, tls)),
            limit,
            prepare,
        }
    }
}

impl r2d2::ManageConnection for PgManager {
    type Connection = PgConnection;
    type Error = PgConnectError;

    fn connect(&self) -> Result<PgConnection, PgConnectError> {
        let inner = Arc::clone(&self.inner);
        let client = within(self.limit, move || inner.connect())?;
        Ok(PgConnection {
            client,
            statements: HashMap::new(),
            prepare: self.prepare,
            lent: false,
        })
    }

    fn is_valid(&self, conn: &mut PgConnection) -> Result<(), PgConnectError> {
        self.inner
            .is_valid(&mut conn.client)
            .map_err(PgConnectError::Server)
    }

    fn has_broken(&self, conn: &mut PgConnection) -> bool {
        self.inner.has_broken(&mut conn.client)
    }
}

/// A pooled connection: a [`postgres::Client`] (which it dereferences to:
/// use it as one) and the statements the engine prepared on it.
///
/// The engine's own transactions run its statements as named prepared
/// statements, prepared once per connection: each then costs one round
/// trip and no planning. (Behind a pooler in transaction mode, which may
/// give each transaction another server connection, turn this off with
/// [`PgBuilder::prepared_statements`](crate::postgres::PgBuilder::prepared_statements).)
pub struct PgConnection {
    client: Client,
    /// The engine's statements prepared on this connection, by their SQL.
    statements: HashMap<String, Statement>,
    /// Whether to prepare them (else each runs unnamed, planned each time).
    prepare: bool,
    /// Lent to a user (`PgEngine::client`) since the engine last began a
    /// transaction on it: it may come back inside a transaction of theirs.
    pub(crate) lent: bool,
}

impl fmt::Debug for PgConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgConnection")
            .field("prepared", &self.statements.len())
            .finish_non_exhaustive()
    }
}

impl Deref for PgConnection {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl DerefMut for PgConnection {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.client
    }
}

impl PgConnection {
    /// The statement for `sql` with parameters of `types`, prepared on
    /// first use.
    fn statement(&mut self, sql: &str, types: &[Type]) -> Result<Statement, postgres::Error> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare_typed(sql, types)?;
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    /// Runs `sql` (one of the engine's statements) with typed parameters.
    pub(crate) fn query_cached(
        &mut self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<Row>, postgres::Error> {
        if !self.prepare {
            return self.client.query_typed(sql, params);
        }
        let (values, types) = split(params);
        let statement = self.statement(sql, &types)?;
        let result = self.client.query(&statement, &values);
        self.forget_on(result)
    }

    /// Runs `sql` (one of the engine's statements) with typed parameters;
    /// the rows it changed.
    pub(crate) fn execute_cached(
        &mut self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<u64, postgres::Error> {
        if !self.prepare {
            return self.client.execute_typed(sql, params);
        }
        let (values, types) = split(params);
        let statement = self.statement(sql, &types)?;
        let result = self.client.execute(&statement, &values);
        self.forget_on(result)
    }

    /// Forgets every prepared statement if `result` says the server no
    /// longer has one (someone ran `DEALLOCATE ALL` or `DISCARD ALL` on a
    /// client lent out by `PgEngine::client`) or cannot run it as
    /// prepared (a table changed under it): the next use prepares again.
    fn forget_on<T>(&mut self, result: Result<T, postgres::Error>) -> Result<T, postgres::Error> {
        if let Err(e) = &result
            && let Some(code) = e.code()
            && (*code == postgres::error::SqlState::INVALID_SQL_STATEMENT_NAME
                || *code == postgres::error::SqlState::FEATURE_NOT_SUPPORTED)
        {
            self.statements.clear();
        }
        result
    }
}

/// Typed parameters as values and their types.
fn split<'a>(
    params: &[(&'a (dyn ToSql + Sync), Type)],
) -> (Vec<&'a (dyn ToSql + Sync)>, Vec<Type>) {
    params.iter().map(|(v, t)| (*v, t.clone())).unzip()
}

/// A connection string without its password, for messages: a URL's
/// `user:password@` and `password=` parameter, and a `key=value` string's
/// `password` value (quoted or not, spaces around `=` or not).
pub(crate) fn redact(url: &str) -> String {
    if let Some(scheme) = url.find("://") {
        return redact_url(url, scheme + 3);
    }
    redact_key_values(url).unwrap_or_else(|| {
        if url.contains("password") {
            "(a connection string holding a password, not shown)".to_owned()
        } else {
            url.to_owned()
        }
    })
}

fn redact_url(url: &str, after_scheme: usize) -> String {
    let rest = &url[after_scheme..];
    let mut out = String::with_capacity(url.len());
    out.push_str(&url[..after_scheme]);
    // The `postgres` crate reads the credentials up to the first '@', so a
    // password may hold '/' or '?' unencoded; a user may mean one with an
    // '@'. Hidden: from the first ':' to the last '@' (more than the
    // password at worst, never less).
    let rest = match (rest.find(':'), rest.rfind('@')) {
        (Some(colon), Some(at)) if colon < at => {
            out.push_str(&rest[..colon]);
            out.push_str(":***");
            &rest[at..]
        }
        _ => rest,
    };
    let (head, query) = match rest.find('?') {
        Some(q) => (&rest[..q], Some(&rest[q + 1..])),
        None => (rest, None),
    };
    out.push_str(head);
    if let Some(query) = query {
        out.push('?');
        let params: Vec<String> = query
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => p.to_owned(),
            })
            .collect();
        out.push_str(&params.join("&"));
    }
    out
}

/// libpq's `key = value` form, the password's value replaced; `None` if
/// it does not scan.
fn redact_key_values(text: &str) -> Option<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        // Whitespace between pairs.
        if chars[i].is_whitespace() {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        // The key.
        let start = i;
        while i < chars.len() && !chars[i].is_whitespace() && chars[i] != '=' {
            i += 1;
        }
        let key: String = chars[start..i].iter().collect();
        out.push_str(&key);
        while i < chars.len() && chars[i].is_whitespace() {
            out.push(chars[i]);
            i += 1;
        }
        if chars.get(i) != Some(&'=') {
            return None;
        }
        out.push('=');
        i += 1;
        while i < chars.len() && chars[i].is_whitespace() {
            out.push(chars[i]);
            i += 1;
        }
        // The value: quoted (with backslash escapes) or up to whitespace.
        let value_start = i;
        if chars.get(i) == Some(&'\'') {
            i += 1;
            loop {
                match chars.get(i) {
                    None => return None,
                    Some('\\') => i += 2,
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(_) => i += 1,
                }
            }
        } else {
            while i < chars.len() && !chars[i].is_whitespace() {
                if chars[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
        }
        let i_end = i.min(chars.len());
        if key == "password" {
            out.push_str("***");
        } else {
            out.extend(&chars[value_start..i_end]);
        }
        i = i_end;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_hidden_in_every_form_the_parser_accepts() {
        for (given, shown) in [
            (
                "postgres://u:secret@h:5432/db?sslmode=disable",
                "postgres://u:***@h:5432/db?sslmode=disable",
            ),
            (
                "postgresql://u@h/db?password=secret&application_name=x",
                "postgresql://u@h/db?password=***&application_name=x",
            ),
            ("postgres://h/db", "postgres://h/db"),
            // Read by the crate as password "hunter2/zz" and "a?b".
            (
                "postgres://app:hunter2/zz@db/app?sslmode=require",
                "postgres://app:***@db/app?sslmode=require",
            ),
            ("postgres://app:a?b@db/app", "postgres://app:***@db/app"),
            ("postgres://app:p@ss@db/app", "postgres://app:***@db/app"),
            (
                "postgres://db/app?password=x@y&port=1",
                "postgres://db/app?password=***&port=1",
            ),
            (
                "host=h user=u password=secret port=1",
                "host=h user=u password=*** port=1",
            ),
            (
                "host=h password='my secret' port=1",
                "host=h password=*** port=1",
            ),
            ("host=h password = secret", "host=h password = ***"),
            ("password='it\\'s secret' host=h", "password=*** host=h"),
            (
                "host=h password='unterminated secret",
                "(a connection string holding a password, not shown)",
            ),
        ] {
            assert_eq!(redact(given), shown, "{given}");
        }
    }
}
