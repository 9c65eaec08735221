//! The LocalAPI's answers as tsinit reads them: status, prefs, the backend state, and the
//! IPN bus notifications (only the fields tsinit uses; the rest is skipped unread).

use std::collections::BTreeMap;
use std::net::IpAddr;

/// GET /localapi/v0/status (the fields tsinit uses; read by
/// [`scan::status`](super::scan::status)).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Status {
    pub backend_state: String,
    pub version: String,
    pub auth_url: String,
    pub tailscale_ips: Vec<String>,
    pub self_: Option<PeerStatus>,
    pub health: Vec<String>,
    pub magic_dns_suffix: String,
    /// CurrentTailnet.MagicDNSSuffix, when there is a current tailnet.
    pub current_tailnet: Option<Tailnet>,
    /// Peers by node key (empty when asked for with `peers=false`).
    pub peer: BTreeMap<String, PeerStatus>,
    pub tun: bool,
    /// DNS names control can get TLS certificates for (empty: HTTPS is off).
    pub cert_domains: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct PeerStatus {
    pub dns_name: String,
    pub tailscale_ips: Vec<String>,
    pub online: bool,
    /// The node's capabilities (the CapMap's keys).
    pub cap_map: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tailnet {
    pub magic_dns_suffix: String,
}

/// GET /localapi/v0/prefs (the fields tsinit uses; read by
/// [`scan::prefs`](super::scan::prefs)).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Prefs {
    pub control_url: String,
    pub route_all: bool,
    pub want_running: bool,
    pub logged_out: bool,
    pub hostname: String,
    pub corp_dns: bool,
    pub run_ssh: bool,
    pub shields_up: bool,
    pub advertise_tags: Vec<String>,
    pub advertise_routes: Vec<String>,
    pub no_stateful_filtering: bool,
    pub no_snat: bool,
    pub exit_node_id: String,
    /// An address, or "" (none).
    pub exit_node_ip: String,
    pub exit_node_allow_lan_access: bool,
    /// AppConnector.Advertise.
    pub advertise_connector: bool,
    /// 0 off, 1 nodivert, 2 on.
    pub netfilter_mode: u8,
    pub operator_user: String,
    /// Config.NodeID: the persisted login's node ("" when the node never logged in).
    pub node_id: String,
    pub run_web_client: bool,
    /// AutoUpdate.Check.
    pub update_check: bool,
    /// AutoUpdate.Apply (null: not set).
    pub auto_update: Option<bool>,
    pub posture_checking: bool,
    /// `None`: no relay server.
    pub relay_server_port: Option<u16>,
    pub profile_name: String,
}

impl Prefs {
    /// Whether these prefs hold a login that tailscaled will resume: not logged out,
    /// meant to run, and a persisted node. (A restarted tailscaled has loaded them while
    /// its state still reads NoState.)
    pub fn saved_login(&self) -> bool {
        !self.logged_out && self.want_running && !self.node_id.is_empty()
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
