//! What the services refused or cut short, for `ephemera ports --stats`:
//! one counter per limit or rule, so every refusal is visible.

/// The services' counters. See the [module docs](self).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ServiceCounters {
    /// SOCKS requests from a client outside `--socks-allow` (reply 02).
    pub socks_denied_client: u64,
    /// SOCKS requests for a denied destination, given or looked up
    /// (reply 02).
    pub socks_denied_destination: u64,
    /// SOCKS clients that offered a wrong username or password.
    pub socks_auth_failed: u64,
    /// Forwarded clients reset because their target's name resolved
    /// only to denied addresses.
    pub forward_denied_destination: u64,
    /// Fetches refused for a denied destination.
    pub fetch_denied_destination: u64,
    /// Connections closed after the idle timeout without a byte moving.
    pub idle_timeouts: u64,
    /// HTTP clients answered 408 and closed: their request head took
    /// longer than the head timeout.
    pub http_head_timeouts: u64,
    /// SOCKS clients closed: their handshake took longer than the head
    /// timeout.
    pub socks_handshake_timeouts: u64,
    /// Times the shared part of the HTTP `/` page was built: at most one
    /// per turn of the loop, however many pages were asked for.
    pub http_pages_built: u64,
    /// Listener rows left off `/` pages beyond the page's limit, summed
    /// over the pages served.
    pub http_page_rows_hidden: u64,
    /// SOCKS UDP associations made (RFC 1928 §7).
    pub socks_udp_associations: u64,
    /// Datagrams relayed from SOCKS clients to their destinations.
    pub socks_udp_to_remote: u64,
    /// Datagrams relayed from destinations back to SOCKS clients.
    pub socks_udp_to_client: u64,
    /// SOCKS UDP fragments (FRAG ≠ 0) dropped: nothing is reassembled.
    pub socks_udp_fragments: u64,
    /// Other SOCKS UDP datagrams dropped: a malformed header, a name for
    /// a destination, a sender that is neither the client nor one of its
    /// destinations, or no room to send.
    pub socks_udp_dropped: u64,
    /// UDP ASSOCIATE requests refused (reply 01) because
    /// `max_associations` associations were open.
    pub socks_udp_refused: u64,
}

impl ServiceCounters {
    /// The counters by name.
    pub fn iter(&self) -> [(&'static str, u64); 16] {
        [
            ("socks_denied_client", self.socks_denied_client),
            ("socks_denied_destination", self.socks_denied_destination),
            ("socks_auth_failed", self.socks_auth_failed),
            (
                "forward_denied_destination",
                self.forward_denied_destination,
            ),
            ("fetch_denied_destination", self.fetch_denied_destination),
            ("idle_timeouts", self.idle_timeouts),
            ("http_head_timeouts", self.http_head_timeouts),
            ("socks_handshake_timeouts", self.socks_handshake_timeouts),
            ("http_pages_built", self.http_pages_built),
            ("http_page_rows_hidden", self.http_page_rows_hidden),
            ("socks_udp_associations", self.socks_udp_associations),
            ("socks_udp_to_remote", self.socks_udp_to_remote),
            ("socks_udp_to_client", self.socks_udp_to_client),
            ("socks_udp_fragments", self.socks_udp_fragments),
            ("socks_udp_dropped", self.socks_udp_dropped),
            ("socks_udp_refused", self.socks_udp_refused),
        ]
    }
}
