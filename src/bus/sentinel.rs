//! Redis behind Sentinel: `redis+sentinel://[:password@]host:26379[,host:26379…]/master[/db]`.
//!
//! The sentinels are asked where the master is at start and then once a second; when they
//! name another address (a failover), the bus connects to the new master, subscribes again to
//! everything it listened to, and tells the hub, which fills what was missed from the store.

use std::time::Duration;

use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{ConnectionAddr, RedisConnectionInfo};

pub const SCHEME: &str = "redis+sentinel://";

/// How often the sentinels are asked where the master is.
pub const POLL: Duration = Duration::from_secs(1);

/// A parsed `redis+sentinel://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SentinelUrl {
    /// `redis://host:port` of each sentinel.
    pub sentinels: Vec<String>,
    /// The master's name in the sentinels' configuration.
    pub master: String,
    /// The password of the master (and its replicas), if any.
    pub password: Option<String>,
    pub db: i64,
}

pub fn is_sentinel(url: &str) -> bool {
    url.starts_with(SCHEME)
}

/// Parses a Sentinel URL; the error says what is wrong in the words of the setting.
pub fn parse(url: &str) -> Result<SentinelUrl, String> {
    let rest = url
        .strip_prefix(SCHEME)
        .ok_or_else(|| format!("CONFAB_REDIS_URL must start with {SCHEME}"))?;
    let (auth, rest) = match rest.rsplit_once('@') {
        Some((auth, rest)) => (Some(auth), rest),
        None => (None, rest),
    };
    let password = auth.and_then(|a| {
        let p = a.split_once(':').map_or(a, |(_, p)| p);
        (!p.is_empty()).then(|| {
            percent_encoding::percent_decode_str(p)
                .decode_utf8_lossy()
                .into_owned()
        })
    });
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let mut parts = rest.splitn(3, '/');
    let hosts = parts.next().unwrap_or_default();
    let master = parts.next().unwrap_or_default().to_string();
    let db = match parts.next() {
        None | Some("") => 0,
        Some(d) => d.parse().map_err(|_| {
            format!(
                "CONFAB_REDIS_URL: the database after the master name must be a number, not {d:?}"
            )
        })?,
    };
    if master.is_empty() {
        return Err(
            "CONFAB_REDIS_URL: a redis+sentinel:// URL names the master after the sentinels, \
             e.g. redis+sentinel://sentinel-0:26379,sentinel-1:26379/mymaster"
                .into(),
        );
    }
    let mut sentinels = Vec::new();
    for host in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
        let with_port = if host
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            host.to_string()
        } else {
            format!("{host}:26379")
        };
        sentinels.push(format!("redis://{with_port}"));
    }
    if sentinels.is_empty() {
        return Err("CONFAB_REDIS_URL: a redis+sentinel:// URL lists at least one sentinel".into());
    }
    Ok(SentinelUrl {
        sentinels,
        master,
        password,
        db,
    })
}

/// The sentinels of one master.
pub struct Sentinels {
    url: SentinelUrl,
    client: tokio::sync::Mutex<SentinelClient>,
    /// A connection to a sentinel for the once-a-second question, reopened when it fails.
    probe: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
}

impl Sentinels {
    pub fn new(url: SentinelUrl) -> redis::RedisResult<Self> {
        let mut node = RedisConnectionInfo::default();
        if let Some(p) = &url.password {
            node = node.set_password(p);
        }
        node = node.set_db(url.db);
        let client = SentinelClient::build(
            url.sentinels.clone(),
            url.master.clone(),
            Some(SentinelNodeConnectionInfo::default().set_redis_connection_info(node)),
            SentinelServerType::Master,
        )?;
        Ok(Sentinels {
            url,
            client: tokio::sync::Mutex::new(client),
            probe: tokio::sync::Mutex::new(None),
        })
    }

    pub fn master_name(&self) -> &str {
        &self.url.master
    }

    /// A client for the master, checked to be one (`ROLE`).
    pub async fn master(&self) -> redis::RedisResult<redis::Client> {
        self.client.lock().await.async_get_client().await
    }

    /// Where the sentinels say the master is now: one command on a kept connection.
    pub async fn master_addr(&self) -> redis::RedisResult<(String, u16)> {
        let mut probe = self.probe.lock().await;
        if probe.is_none() {
            let client = self.client.lock().await.async_get_sentinel_client().await?;
            *probe = Some(client.get_multiplexed_async_connection().await?);
        }
        let con = probe.as_mut().expect("just set");
        let answer: redis::RedisResult<Option<(String, u16)>> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(&self.url.master)
            .query_async(con)
            .await;
        match answer {
            Ok(Some(addr)) => Ok(addr),
            Ok(None) => Err((
                redis::ErrorKind::Client,
                "the sentinels do not know the master",
                self.url.master.clone(),
            )
                .into()),
            Err(e) => {
                *probe = None;
                Err(e)
            }
        }
    }
}

/// The host and port a client connects to.
pub fn addr_of(client: &redis::Client) -> Option<(String, u16)> {
    match client.get_connection_info().addr() {
        ConnectionAddr::Tcp(host, port) => Some((host.clone(), *port)),
        ConnectionAddr::TcpTls { host, port, .. } => Some((host.clone(), *port)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_the_sentinels_the_master_and_its_password() {
        let u = parse("redis+sentinel://:s%40cret@a:26380,b,c:1/mymaster/2").unwrap();
        assert_eq!(
            u.sentinels,
            ["redis://a:26380", "redis://b:26379", "redis://c:1"]
        );
        assert_eq!(u.master, "mymaster");
        assert_eq!(u.password.as_deref(), Some("s@cret"));
        assert_eq!(u.db, 2);
        let u = parse("redis+sentinel://127.0.0.1:26379/m").unwrap();
        assert_eq!(u.password, None);
        assert_eq!(u.db, 0);
        for bad in [
            "redis+sentinel://a:26379",
            "redis+sentinel://a:26379/",
            "redis+sentinel:///m",
            "redis+sentinel://a/m/x",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains("CONFAB_REDIS_URL"), "{bad}: {e}");
        }
    }
}
