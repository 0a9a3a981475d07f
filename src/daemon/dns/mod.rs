//! DNS over the stack's own ports, sans-IO: a forwarder for clients that
//! query ephemera, and a stub resolver for the daemon's own name lookups,
//! both on one table of queries in flight.
//!
//! Nothing here touches a socket or reads a clock. A driver feeds in
//! queries, datagrams from upstream name servers and the time, and carries
//! out what comes back:
//!
//! - [`Transmit::Udp`](table::Transmit::Udp): open a *connected* UDP socket to the upstream, on a
//!   local port the port table picks (RFC 6056), send the message on it,
//!   and report the socket's local address with
//!   [`QueryTable::handle_sent`](table::QueryTable::handle_sent);
//! - [`Transmit::Tcp`](table::Transmit::Tcp): ask the upstream again over TCP, after a truncated
//!   answer;
//! - [`Transmit::Close`](table::Transmit::Close): that attempt is over, close its socket;
//! - an answer or a failure for the client ([`Output::Done`](table::Output::Done), which the
//!   [`forwarder`] turns into a reply datagram and the [`stub`] resolver
//!   into addresses).
//!
//! RFC 5452 is the point of the design: every attempt leaves from a fresh
//! port with a fresh random ID, and an answer is accepted only from the
//! address and port the query went to, at the local address it left from,
//! with the query's ID and question (§9.1). An off-path attacker must
//! guess the port and the ID together. Anything else is dropped and
//! counted as a mismatch.
//!
//! [`table`] holds the rules (acceptance, timeouts, retries, truncation,
//! bounds); [`forwarder`] and [`stub`] are its two front ends.

pub(crate) mod forwarder;
pub(crate) mod stub;
pub(crate) mod table;
