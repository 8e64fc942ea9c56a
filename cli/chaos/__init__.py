"""`rmqz chaos`: fault-injection runs with a Jepsen-shaped history and a checker.

    history.py   the JSONL history (Jepsen's event shape) and its reader
    checker.py   lost / unexpected / duplicated / recovered, recovery times, latency (pure)
    plot.py      latency-over-time PNG with fault windows shaded (stdlib only)
    report.py    tables, the JSON summary line, the plot next to the history
    workload.py  producer and consumer clients that record every operation
    cluster.py   the cluster under test (`rmqz up` subprocess): nodes, leader, supervisor
    nemesis.py   the faults: kill, pause, partition, power loss, and healing them
    command.py   the click command
"""
