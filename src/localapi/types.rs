//! The LocalAPI's answers as tsinit reads them: status, prefs, the backend state, and the
//! IPN bus notifications (only the fields tsinit uses; the rest is skipped unread).

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Deserializer};

/// Deserializes null as the type's default (serde's `default` only covers missing fields).
fn null_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// GET /localapi/v0/status (the fields tsinit uses).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Status {
    pub backend_state: String,
    pub version: String,
    #[serde(rename = "AuthURL")]
    pub auth_url: String,
    #[serde(rename = "TailscaleIPs", deserialize_with = "null_default")]
    pub tailscale_ips: Vec<String>,
    #[serde(rename = "Self")]
    pub self_: Option<PeerStatus>,
    #[serde(deserialize_with = "null_default")]
    pub health: Vec<String>,
    #[serde(rename = "MagicDNSSuffix")]
    pub magic_dns_suffix: String,
    pub current_tailnet: Option<Tailnet>,
    #[serde(deserialize_with = "null_default")]
    pub peer: BTreeMap<String, PeerStatus>,
    #[serde(rename = "TUN")]
    pub tun: bool,
    /// DNS names control can get TLS certificates for (empty: HTTPS is off).
    #[serde(deserialize_with = "null_default")]
    pub cert_domains: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PeerStatus {
    #[serde(rename = "DNSName")]
    pub dns_name: String,
    #[serde(rename = "TailscaleIPs", deserialize_with = "null_default")]
    pub tailscale_ips: Vec<String>,
    pub online: bool,
    /// The node's capabilities (keys only).
    #[serde(deserialize_with = "null_default")]
    pub cap_map: BTreeMap<String, Skipped>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Tailnet {
    #[serde(rename = "MagicDNSSuffix")]
    pub magic_dns_suffix: String,
}

/// A JSON value skipped unread (only its presence counts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Skipped;

impl<'de> Deserialize<'de> for Skipped {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Skipped, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| Skipped)
    }
}

/// GET /localapi/v0/prefs (the fields tsinit uses).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Prefs {
    #[serde(rename = "ControlURL")]
    pub control_url: String,
    pub route_all: bool,
    pub want_running: bool,
    pub logged_out: bool,
    pub hostname: String,
    #[serde(rename = "CorpDNS")]
    pub corp_dns: bool,
    #[serde(rename = "RunSSH")]
    pub run_ssh: bool,
    pub shields_up: bool,
    #[serde(deserialize_with = "null_default")]
    pub advertise_tags: Vec<String>,
    #[serde(deserialize_with = "null_default")]
    pub advertise_routes: Vec<String>,
    pub no_stateful_filtering: bool,
    #[serde(rename = "NoSNAT")]
    pub no_snat: bool,
    #[serde(rename = "ExitNodeID")]
    pub exit_node_id: String,
    /// An address, or "" (none).
    #[serde(rename = "ExitNodeIP")]
    pub exit_node_ip: String,
    #[serde(rename = "ExitNodeAllowLANAccess")]
    pub exit_node_allow_lan_access: bool,
    pub app_connector: AppConnector,
    /// 0 off, 1 nodivert, 2 on.
    pub netfilter_mode: u8,
    pub operator_user: String,
    /// The persisted login (keys redacted); null when the node never logged in.
    pub config: Option<serde_json::Value>,
}

/// Prefs.AppConnector.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AppConnector {
    pub advertise: bool,
}

impl Prefs {
    /// Whether these prefs hold a login that tailscaled will resume: not logged out,
    /// meant to run, and a persisted node. (A restarted tailscaled has loaded them while
    /// its state still reads NoState.)
    pub fn saved_login(&self) -> bool {
        let node = self
            .config
            .as_ref()
            .and_then(|c| c.get("NodeID"))
            .and_then(|n| n.as_str());
        !self.logged_out && self.want_running && node.is_some_and(|n| !n.is_empty())
    }
}

/// tailscaled's backend state (ipn.State), as its number on the IPN bus and its name in
/// the status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendState {
    #[default]
    NoState,
    InUseOtherUser,
    NeedsLogin,
    NeedsMachineAuth,
    Stopped,
    Starting,
    Running,
}

impl BackendState {
    const ALL: [BackendState; 7] = [
        BackendState::NoState,
        BackendState::InUseOtherUser,
        BackendState::NeedsLogin,
        BackendState::NeedsMachineAuth,
        BackendState::Stopped,
        BackendState::Starting,
        BackendState::Running,
    ];

    /// The state with this number on the IPN bus.
    pub fn from_number(n: u64) -> Option<BackendState> {
        BackendState::ALL.get(usize::try_from(n).ok()?).copied()
    }

    /// The state with this name in the status (`BackendState`).
    pub fn from_name(name: &str) -> Option<BackendState> {
        BackendState::ALL.into_iter().find(|s| s.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            BackendState::NoState => "NoState",
            BackendState::InUseOtherUser => "InUseOtherUser",
            BackendState::NeedsLogin => "NeedsLogin",
            BackendState::NeedsMachineAuth => "NeedsMachineAuth",
            BackendState::Stopped => "Stopped",
            BackendState::Starting => "Starting",
            BackendState::Running => "Running",
        }
    }

    /// Logged in with a netmap: the node's names are served.
    pub fn logged_in(self) -> bool {
        matches!(self, BackendState::Starting | BackendState::Running)
    }
}

impl std::fmt::Display for BackendState {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Status {
    /// The backend state, if tailscaled named one tsinit knows.
    pub fn state(&self) -> Option<BackendState> {
        BackendState::from_name(&self.backend_state)
    }
}

/// Which notifications the IPN bus sends (ipn.NotifyWatchOpt).
pub mod notify {
    /// The first notification carries the current state.
    pub const INITIAL_STATE: u32 = 1 << 1;
    /// The first notification carries the current netmap.
    pub const INITIAL_NETMAP: u32 = 1 << 3;
}

/// The node capability control grants where Tailscale SSH is enabled.
pub const SSH_CAPABILITY: &str = "https://tailscale.com/cap/ssh";

/// One IPN bus notification (ipn.Notify), the fields tsinit uses (read by
/// [`scan::notification`](super::scan::notification)).
#[derive(Debug, Default)]
pub struct Notify {
    /// The new or current state (its number).
    pub state: Option<u64>,
    pub net_map: Option<NetMap>,
}

/// The netmap of a notification (netmap.NetworkMap), the fields tsinit uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NetMap {
    pub self_node: Option<Node>,
    pub peers: Vec<Node>,
}

/// A node of the netmap (tailcfg.Node), the fields tsinit uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Node {
    /// The DNS name, with its trailing dot.
    pub name: String,
    /// Its addresses (the prefixes' addresses; anything else is left out).
    pub addresses: Vec<IpAddr>,
    pub online: Option<bool>,
}
