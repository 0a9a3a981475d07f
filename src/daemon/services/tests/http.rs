//! HTTP.

use super::*;

#[test]
fn http_root_shows_the_clients_exact_4_tuple_and_the_port_table() {
    let mut t = trio(
        10,
        ServicesConfig {
            http: Some(80),
            echo: Some(7),
            ..Default::default()
        },
    );
    let mut c = Client::connect(t.net.stack(0), "10.0.0.2:80");
    let me = t.net.stack(0).local_addr(c.h).unwrap();
    c.write(&http_get("/", true));
    t.run(|n, _| {
        c.pump(n.stack(0));
        c.eof
    });
    let (status, body) = parse_response(&c.got);
    assert_eq!(status, 200);
    let page = String::from_utf8(body).unwrap();
    assert!(
        page.contains(&format!("you are {me} -> 10.0.0.2:80")),
        "{page}"
    );
    // The port table lists the listeners and this very connection.
    let row = page
        .lines()
        .find(|l| l.starts_with("tcp") && l.contains(&me.to_string()))
        .unwrap_or_else(|| panic!("no row for {me}:\n{page}"));
    assert!(
        row.starts_with("tcp") && row.contains("ESTABLISHED") && row.contains("10.0.0.2:80"),
        "{page}"
    );
    assert!(page
        .lines()
        .any(|l| l.contains("LISTEN") && l.contains("0.0.0.0:80")));
    assert!(page
        .lines()
        .any(|l| l.starts_with("udp") && l.contains("0.0.0.0:7")));
}

#[test]
fn http_bytes_streams_a_megabyte_exactly() {
    let mut t = trio(
        11,
        ServicesConfig {
            http: Some(80),
            ..Default::default()
        },
    );
    let mut c = Client::connect(t.net.stack(0), "10.0.0.2:80");
    c.write(&http_get("/bytes/1000000", true));
    t.run(|n, _| {
        c.pump(n.stack(0));
        c.eof
    });
    let (status, body) = parse_response(&c.got);
    assert_eq!(status, 200);
    assert_eq!(body.len(), 1_000_000);
    for (i, &b) in body.iter().enumerate() {
        assert_eq!(b, pattern_byte(i as u64), "byte {i}");
    }
}

#[test]
fn http_keep_alive_serves_two_requests_on_one_connection_and_404s() {
    let mut t = trio(
        12,
        ServicesConfig {
            http: Some(80),
            ..Default::default()
        },
    );
    let mut c = Client::connect(t.net.stack(0), "10.0.0.2:80");
    let me = t.net.stack(0).local_addr(c.h).unwrap();
    c.write(&http_get("/bytes/5000", false));
    // Complete when the parser says so; the connection stays open.
    t.run(|n, _| {
        c.pump(n.stack(0));
        let mut p = ResponseParser::new();
        let mut b = Vec::new();
        p.handle_input(&c.got, &mut b).is_ok() && p.is_complete()
    });
    assert!(!c.eof, "keep-alive connection closed after one response");
    let (status, body) = parse_response(&c.got);
    assert_eq!((status, body.len()), (200, 5000));
    assert!((0..5000).all(|i| body[i] == pattern_byte(i as u64)));

    let first = c.got.len();
    c.write(&http_get("/nothing-here", false));
    t.run(|n, _| {
        c.pump(n.stack(0));
        let mut p = ResponseParser::new();
        let mut b = Vec::new();
        p.handle_input(&c.got[first..], &mut b).is_ok() && p.is_complete()
    });
    let (status, body) = parse_response(&c.got[first..]);
    assert_eq!(status, 404);
    assert_eq!(body, b"404 Not Found\n");

    let second = c.got.len();
    c.write(&http_get("/", true));
    t.run(|n, _| {
        c.pump(n.stack(0));
        c.eof
    });
    let (status, body) = parse_response(&c.got[second..]);
    assert_eq!(status, 200);
    assert!(String::from_utf8(body)
        .unwrap()
        .contains(&format!("you are {me} ->")));
    // Three requests, one connection.
    assert_eq!(t.net.stack(1).counters().tcp_accepted, 1);
}

#[test]
fn malformed_http_gets_400_while_a_concurrent_client_is_served() {
    let mut t = trio(
        13,
        ServicesConfig {
            http: Some(80),
            ..Default::default()
        },
    );
    let mut good = Client::connect(t.net.stack(0), "10.0.0.2:80");
    let mut bad = Client::connect(t.net.stack(0), "10.0.0.2:80");
    good.write(&http_get("/bytes/200000", true));
    bad.write(b"HELLO THERE\r\n\r\n");
    t.run(|n, _| {
        good.pump(n.stack(0));
        bad.pump(n.stack(0));
        good.eof && bad.eof
    });
    let (status, _) = parse_response(&bad.got);
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&bad.got).contains("Connection: close"));
    let (status, body) = parse_response(&good.got);
    assert_eq!((status, body.len()), (200, 200_000));
    assert!(body
        .iter()
        .enumerate()
        .all(|(i, &b)| b == pattern_byte(i as u64)));
}
