//! One pass of `analyze_request` (or, with `split`, of `split_body`; with `search`, the staged search
//! text of each body's last messages and the staged title of its first ones, timed) over every body in a folder: run
//! it under `valgrind --tool=callgrind` to count instructions, which stay comparable on a busy machine
//! where time does not (bench/README.md, "Counting instructions").
fn main() {
    let dir = std::env::args().nth(1).unwrap();
    let what = std::env::args().nth(2).unwrap_or_default();
    let mut n = 0;
    let mut searched = std::time::Duration::ZERO;
    let mut titled = std::time::Duration::ZERO;
    for e in std::fs::read_dir(dir).unwrap() {
        let b = std::fs::read(e.unwrap().path()).unwrap();
        if what == "split" {
            std::hint::black_box(nexus_core::body::split_body(&b).unwrap());
        } else if what == "search" {
            // the staged search text of the body's last messages (the storage row builder's step)
            let split = nexus_core::body::split_body(&b).unwrap();
            let keys = split.message_keys.unwrap_or_default();
            let part = |k: &nexus_core::body::Key| {
                split
                    .parts
                    .iter()
                    .find(|(p, ..)| p == k)
                    .map(|(.., part)| *part)
            };
            let last: Vec<&[u8]> = keys.iter().rev().take(4).filter_map(part).collect();
            let first: Vec<&[u8]> = keys.iter().take(12).filter_map(part).collect();
            let started = std::time::Instant::now();
            std::hint::black_box(nexus_core::search::search_text(&last, Some("main"), None));
            searched += started.elapsed();
            let started = std::time::Instant::now();
            std::hint::black_box(nexus_core::search::title(&first));
            titled += started.elapsed();
        } else {
            std::hint::black_box(nexus_core::conversation::analyze_request(&b, true).unwrap());
        }
        n += 1;
    }
    eprintln!("{n} bodies");
    if what == "search" {
        eprintln!(
            "search text: {:.1} us a body, title: {:.1} us a body",
            searched.as_secs_f64() * 1e6 / f64::from(n),
            titled.as_secs_f64() * 1e6 / f64::from(n)
        );
    }
}
