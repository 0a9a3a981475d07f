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
fn http_bytes_to_a_slow_reader_arrive_exactly() {
    // The client takes at most 700 bytes a step, so the server's send
    // buffer fills and the service keeps what the stack refuses of each
    // chunk for later.
    let mut t = trio(
        13,
        ServicesConfig {
            http: Some(80),
            ..Default::default()
        },
    );
    let mut c = Client::connect(t.net.stack(0), "10.0.0.2:80");
    c.write(&http_get("/bytes/300000", true));
    let mut buf = [0u8; 700];
    t.run(|n, _| {
        let stack = n.stack(0);
        while c.sent < c.out.len() {
            match stack.send(c.h, &c.out[c.sent..]) {
                Ok(k) => c.sent += k,
                Err(_) => break,
            }
        }
        match stack.recv(c.h, &mut buf) {
            Ok(0) => c.eof = true,
            Ok(k) => c.got.extend_from_slice(&buf[..k]),
            Err(_) => {}
        }
        c.eof
    });
    let (status, body) = parse_response(&c.got);
    assert_eq!(status, 200);
    assert_eq!(body.len(), 300_000);
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

#[test]
fn the_root_page_shows_no_other_clients_4_tuple() {
    let mut t = trio(
        12,
        ServicesConfig {
            http: Some(80),
            echo: Some(7),
            ..Default::default()
        },
    );
    // Another client of the daemon, mid-conversation.
    let mut other = Client::connect(t.net.stack(0), "10.0.0.2:7");
    let theirs = t.net.stack(0).local_addr(other.h).unwrap();
    other.write(b"private");
    t.run(|n, _| {
        other.pump(n.stack(0));
        other.got == b"private"
    });
    let mut c = Client::connect(t.net.stack(0), "10.0.0.2:80");
    let me = t.net.stack(0).local_addr(c.h).unwrap();
    c.write(&http_get("/", true));
    t.run(|n, _| {
        c.pump(n.stack(0));
        c.eof
    });
    let page = String::from_utf8(parse_response(&c.got).1).unwrap();
    assert!(page.contains(&me.to_string()), "{page}");
    assert!(
        !page.contains(&theirs.port().to_string()),
        "another client's port is on the page:\n{page}"
    );
    // It is counted, though.
    assert!(
        page.contains("listening 2 TCP, 1 UDP; connections 2; TIME-WAIT 0"),
        "{page}"
    );
}

#[test]
fn root_pages_are_bounded_and_built_once_per_turn() {
    // 40 forwards, HTTP and echo: 42 TCP listeners and one UDP socket.
    let forwards = (0..40)
        .map(|i| forward(9000 + i, "10.0.0.3", 7000))
        .collect();
    let mut t = trio(
        13,
        ServicesConfig {
            http: Some(80),
            echo: Some(7),
            forwards,
            ..Default::default()
        },
    );
    // Ten clients whose requests all reach the stack before the services
    // next run: one turn serves them all.
    let mut clients: Vec<Client> = (0..10)
        .map(|_| {
            let mut c = Client::connect(t.net.stack(0), "10.0.0.2:80");
            c.write(&http_get("/", true));
            c
        })
        .collect();
    t.net
        .run_until(STEPS, |n| {
            for c in clients.iter_mut() {
                c.pump(n.stack(0));
            }
            clients
                .iter()
                .all(|c| c.all_sent() && n.stack(0).send_queue(c.h) == 0)
        })
        .unwrap();
    let now = t.net.now();
    t.svc.handle_events(t.net.stack(1), now);
    assert_eq!(t.svc.counters().http_pages_built, 1);
    t.run(|n, _| {
        for c in clients.iter_mut() {
            c.pump(n.stack(0));
        }
        clients.iter().all(|c| c.eof)
    });
    let hidden = 42 + 1 - MAX_PAGE_LISTENERS;
    for c in &clients {
        let me = t.net.stack(0).local_addr(c.h).unwrap();
        let page = String::from_utf8(parse_response(&c.got).1).unwrap();
        let rows = page
            .lines()
            .filter(|l| l.starts_with("tcp") || l.starts_with("udp"));
        assert_eq!(rows.count(), MAX_PAGE_LISTENERS + 1, "{page}");
        assert!(
            page.contains(&format!("... and {hidden} more listeners")),
            "{page}"
        );
        assert!(page.contains(&me.to_string()), "{page}");
        assert!(page.len() < 4096, "{} bytes", page.len());
    }
    let counters = t.svc.counters();
    assert_eq!(counters.http_pages_built, 1);
    assert_eq!(counters.http_page_rows_hidden, 10 * hidden as u64);
}
