"""The overhead harness behind `python -m bench.overhead`: processes and CPU pinning (`procs`), the load
tools (`tools`: wrk and the Rust bench/loadgen), the measurements (`phases`) and the table (`report`)."""
