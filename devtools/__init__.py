"""Dev-side tooling shared by tests, bench and the infra rehearsal; never shipped.

server.py   gunicorn with the shipped gunicorn.conf.py, a plain HTTP(S) client, multipart
stack.py    the production shape around it: the rendered nginx site, a TLS load balancer,
            a cgroup memory limit like the host unit, one pinned CPU
procs.py    free ports, process trees and resident memory read from /proc and cgroups
load.py     closed-loop load, percentiles and the JSON reports under test-artifacts/
"""
