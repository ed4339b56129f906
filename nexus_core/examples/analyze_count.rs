//! One pass of `analyze_request` (or, with `split`, of `split_body`) over every body in a folder: run
//! it under `valgrind --tool=callgrind` to count instructions, which stay comparable on a busy machine
//! where time does not (bench/README.md, "Counting instructions").
fn main() {
    let dir = std::env::args().nth(1).unwrap();
    let what = std::env::args().nth(2).unwrap_or_default();
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let b = std::fs::read(e.unwrap().path()).unwrap();
        if what == "split" {
            std::hint::black_box(nexus_core::body::split_body(&b).unwrap());
        } else {
            std::hint::black_box(nexus_core::conversation::analyze_request(&b, true).unwrap());
        }
        n += 1;
    }
    eprintln!("{n} bodies");
}
