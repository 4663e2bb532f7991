#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into corpus/<target>/ from real inputs:
the parser tests' kubelet sample and edge cases, selectors from the selector tests, SampleBatch
messages shaped like the scraper's (snapshot, live, release), and request targets from the router
tests. Deterministic; rerun after changing it: python3 seeds/make_seeds.py (from loadtest/fuzz)."""

import hashlib
import os
import re
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.normpath(os.path.join(HERE, "..", "..", ".."))
CORPUS = os.path.join(HERE, "..", "corpus")


def write(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    name = "seed-" + hashlib.sha1(data).hexdigest()[:16]
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- kubelet_parse: the parser tests' realistic sample and every concat!() case ---------------
parse_rs = open(os.path.join(ROOT, "scraper/src/kubelet/parse.rs")).read()
sample = re.search(r'const KUBELET_SAMPLE: &str = r#"(.*?)"#;', parse_rs, re.S).group(1)
write("kubelet_parse", sample)
write("kubelet_parse", sample.replace("\n", "\r\n"))
for block in re.findall(r"concat!\((.*?)\)\);", parse_rs, re.S):
    lines = re.findall(r'"((?:[^"\\]|\\.)*)"', block)
    write("kubelet_parse", "".join(bytes(l, "utf-8").decode("unicode_escape") for l in lines))
for single in re.findall(r'parse\("((?:[^"\\]|\\.)*)"\)', parse_rs):
    write("kubelet_parse", bytes(single, "utf-8").decode("unicode_escape"))

# --- selectors: from the selector tests ------------------------------------------------------
sel_rs = open(os.path.join(ROOT, "frontend/src/api/selector.rs")).read()
tests = sel_rs[sel_rs.index("#[cfg(test)]"):]
for s in set(re.findall(r'\(\s*r?"((?:[^"\\]|\\.)*)"', tests)) | set(re.findall(r'sel\("((?:[^"\\]|\\.)*)"\)', tests)):
    write("selectors", s.replace('\\"', '"'))
for s in ["app in (web,api),tier!=db,!canary,env", "metadata.name=web-1,metadata.namespace!=kube-system",
          r"metadata.name==a\,b\=c\\", "example.com/n>7,n<-1", "x notin (in,notin,)"]:
    write("selectors", s)

# --- grpc_batch: protobuf SampleBatch messages like the scraper's ----------------------------
def varint(n):
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(num, wire, payload):
    key = varint((num << 3) | wire)
    if wire == 0:
        return key + varint(payload)
    return key + varint(len(payload)) + payload


def s(num, text):
    return field(num, 2, text.encode())


def point(ts, cpu, mem):
    return field(1, 0, ts) + field(2, 0, cpu) + field(3, 0, mem)


T0 = 1_767_225_600_000


def scrape(node, t, pods):
    out = s(1, node) + field(2, 0, T0 + t + 20) + field(3, 2, point(T0 + t, 10**12 + t * 2_000_000, 8 << 30))
    for ns_index, name, containers in pods:
        pod = field(1, 0, ns_index) + s(2, name)
        for c_index in containers:
            pod += field(3, 2, field(1, 0, c_index) + field(2, 0, T0 - 3_600_000) + field(3, 2, point(T0 + t - 5, 10**12 + t * 500_000, 50 << 20)))
        out += field(4, 2, pod)
    return out


strings = ["", "default", "kube-system", "app", "istio-proxy", "coredns"]
pods = [(1, "web-a", [3, 4]), (1, "web-b", [3]), (2, "coredns-1", [5])]
shard = field(1, 2, s(1, "shardmetrics-scraper-0") + field(2, 0, 1_767_225_000_000_000_000))
table = b"".join(s(2, x) for x in strings)
write("grpc_batch", shard + table + field(3, 2, scrape("n1", 0, pods)) + field(3, 2, scrape("n1", 15_000, pods)) + field(5, 0, 1))
write("grpc_batch", shard + table + field(3, 2, scrape("n2", 15_000, pods[:1])))
write("grpc_batch", shard + field(4, 2, s(1, "n3") + field(2, 0, 2)) + field(4, 2, s(1, "n4") + field(2, 0, 3)))
write("grpc_batch", shard + field(5, 0, 1))

# --- api_route: method byte, request target, '\n', Accept ------------------------------------
router_rs = open(os.path.join(ROOT, "frontend/src/api/router.rs")).read()
paths = set(re.findall(r'"(/(?:apis|api|openapi|version)[^"]*)"', router_rs))
accepts = ["", "application/json", "application/vnd.kubernetes.protobuf",
           "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
           "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList", "text/html"]
for i, p in enumerate(sorted(paths)):
    write("api_route", bytes([0]) + p.encode() + b"\n" + accepts[i % len(accepts)].encode())
for q in ["/apis/metrics.k8s.io/v1beta1/namespaces/default/pods?labelSelector=app%3Dweb&fieldSelector=metadata.name!%3Dx",
          "/apis/metrics.k8s.io/v1beta1/pods?labelSelector=tier+in+(default,payments)&includeObject=None",
          "/apis/metrics.k8s.io/v1beta1/nodes?labelSelector=zone%3Da&watch=1",
          "/apis/metrics.k8s.io/v1beta1/nodes/node-1?fieldSelector=metadata.name%3Dnode-1"]:
    for method in range(2):
        write("api_route", bytes([method]) + q.encode() + b"\napplication/json;as=Table;v=v1;g=meta.k8s.io")
