#!/usr/bin/env bash
# Build the real Kubernetes control plane, kwok, etcd and etcdutl used by the tests and
# `fluidfed demo`, and the pieces of a real node (kubelet, containerd + ctr + shim,
# runc, the CNI plugins, CoreDNS, a static pause), from the Go module proxy, into a
# cache outside the repository.
#
#   scripts/testbin.sh            build what is missing, print the directory
#   FLUIDFED_TESTBIN=/path ...    use another cache directory
#
# A second run finds the binaries and builds nothing. The first run takes
# several minutes on two cores (kube-apiserver is the slowest).
set -euo pipefail

K8S_VERSION="${FLUIDFED_K8S_VERSION:-v1.34.4}"
KWOK_VERSION="${FLUIDFED_KWOK_VERSION:-v0.7.0}"
# MinIO publishes no semver tags: the proxy serves it as a pseudo-version (RELEASE 2026-02-12)
MINIO_VERSION="${FLUIDFED_MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}"
ETCD_VERSION="${FLUIDFED_ETCD_VERSION:-v3.6.4}"
CONTAINERD_VERSION="${FLUIDFED_CONTAINERD_VERSION:-v2.1.9}"
RUNC_VERSION="${FLUIDFED_RUNC_VERSION:-v1.3.7}"
CNI_PLUGINS_VERSION="${FLUIDFED_CNI_PLUGINS_VERSION:-v1.7.1}"
COREDNS_VERSION="${FLUIDFED_COREDNS_VERSION:-v1.14.7}"

cache_root="${FLUIDFED_TESTBIN:-${XDG_CACHE_HOME:-$HOME/.cache}/fluidfed/testbin}"
out="$cache_root/$K8S_VERSION"
mkdir -p "$out"

say() { printf '[testbin] %s\n' "$*" >&2; }

if ! command -v go >/dev/null 2>&1; then
  say "Go is needed to build the local-cluster binaries (install Go >= 1.24 and retry)"
  exit 1
fi

export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local
staging_minor="v0.${K8S_VERSION#v1.}"          # v1.34.4 -> v0.34.4

build_kube() {
  local work="$cache_root/src/kubernetes-$K8S_VERSION"
  mkdir -p "$work"
  if [ ! -f "$work/go.sum" ]; then
    say "resolving k8s.io/kubernetes@$K8S_VERSION from the Go module proxy"
    local modfile
    modfile=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
    {
      echo "module fluidfed.local/testbin"
      echo
      echo "go 1.24.0"
      echo
      echo "require k8s.io/kubernetes $K8S_VERSION"
      echo
      echo "replace ("
      # every staging module the release replaces with ./staging/src/... is
      # published on the proxy as v0.Y.Z: take the list from its own go.mod
      sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\t\1 => \1 '"$staging_minor"'#p' "$modfile"
      echo ")"
    } > "$work/go.mod"
    (cd "$work" && go get "k8s.io/kubernetes/cmd/kube-apiserver@$K8S_VERSION" >&2)
  fi
  local major minor
  major=$(echo "$K8S_VERSION" | cut -d. -f1 | tr -d v)
  minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  local ldflags=""
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet; do
    if [ -x "$out/$cmd" ]; then continue; fi
    say "building $cmd $K8S_VERSION (go build, CGO_ENABLED=0; minutes on a small machine)"
    local t0=$SECONDS
    (cd "$work" && go build -trimpath -ldflags "-s -w $ldflags" -o "$out/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd")
    mv "$out/$cmd.tmp" "$out/$cmd"
    say "built $cmd in $((SECONDS - t0))s"
  done
}

build_kwok() {
  [ -x "$out/kwok" ] && return 0
  say "installing sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  GOBIN="$out" go install "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
}

build_etcd() {
  [ -x "$out/etcd" ] && return 0
  local work="$cache_root/src/etcd-$ETCD_VERSION"
  mkdir -p "$work"
  say "building etcd $ETCD_VERSION from go.etcd.io/etcd/server/v3"
  cat > "$work/go.mod" <<GOMOD
module fluidfed.local/etcd

go 1.24.0
GOMOD
  cat > "$work/main.go" <<'GO'
// The etcd binary: the release's main is a thin call into etcdmain.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  (cd "$work" && go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >&2 && go mod tidy >&2 \
    && go build -trimpath -ldflags "-s -w" -o "$out/etcd.tmp" .)
  mv "$out/etcd.tmp" "$out/etcd"
}

build_etcdutl() {
  # etcd's offline tool, same version: `etcdutl snapshot restore` puts a snapshot (`fluidfed
  # hub backup` on etcd) back in the members' data directories
  [ -x "$out/etcdutl" ] && return 0
  local work="$cache_root/src/etcdutl-$ETCD_VERSION"
  mkdir -p "$work"
  say "building etcdutl $ETCD_VERSION from go.etcd.io/etcd/etcdutl/v3"
  cat > "$work/go.mod" <<GOMOD
module fluidfed.local/etcdutl

go 1.24.0
GOMOD
  cat > "$work/tools.go" <<'GO'
//go:build tools

// The module requires etcdutl's main package; `go build` below builds it.
package tools

import _ "go.etcd.io/etcd/etcdutl/v3"
GO
  (cd "$work" && go get "go.etcd.io/etcd/etcdutl/v3@$ETCD_VERSION" >&2 && go mod tidy >&2 \
    && go build -trimpath -ldflags "-s -w" -o "$out/etcdutl.tmp" go.etcd.io/etcd/etcdutl/v3)
  mv "$out/etcdutl.tmp" "$out/etcdutl"
}

build_minio() {
  # the S3 server of the tests (what Fluid's JuiceFS guide runs), cached beside the rest
  [ -x "$out/minio" ] && return 0
  say "installing github.com/minio/minio@$MINIO_VERSION (a few minutes)"
  local t0=$SECONDS
  GOBIN="$out" go install "github.com/minio/minio@$MINIO_VERSION"
  say "built minio in $((SECONDS - t0))s"
}

build_containerd() {
  # `go install ...@v2` is refused (containerd's go.mod has exclude directives): a wrapper
  # module carries the same exclude block and builds the daemon, ctr and the runc shim
  local have=1 cmd
  for cmd in containerd ctr containerd-shim-runc-v2; do [ -x "$out/$cmd" ] || have=0; done
  [ "$have" = 1 ] && return 0
  local work="$cache_root/src/containerd-$CONTAINERD_VERSION"
  local module=github.com/containerd/containerd/v2
  mkdir -p "$work"
  if [ ! -f "$work/go.sum" ]; then
    say "resolving $module@$CONTAINERD_VERSION from the Go module proxy"
    local modfile
    modfile=$(go mod download -json "$module@$CONTAINERD_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
    {
      echo "module fluidfed.local/containerd"
      echo
      echo "go 1.24.2"
      echo
      sed -n '/^exclude (/,/^)/p' "$modfile"
    } > "$work/go.mod"
    (cd "$work" && go get "$module@$CONTAINERD_VERSION" >&2)
  fi
  local ldflags="-s -w -X $module/version.Version=$CONTAINERD_VERSION -X $module/version.Revision=fluidfed"
  for cmd in containerd ctr containerd-shim-runc-v2; do
    [ -x "$out/$cmd" ] && continue
    say "building $cmd $CONTAINERD_VERSION"
    local t0=$SECONDS
    (cd "$work" && go build -trimpath -tags "no_btrfs no_devmapper no_zfs" -ldflags "$ldflags" \
      -o "$out/$cmd.tmp" "$module/cmd/$cmd")
    mv "$out/$cmd.tmp" "$out/$cmd"
    say "built $cmd in $((SECONDS - t0))s"
  done
}

build_runc() {
  # cgo for seccomp (Debian's libseccomp-dev)
  [ -x "$out/runc" ] && return 0
  if ! pkg-config --exists libseccomp 2>/dev/null; then
    say "runc needs libseccomp's headers: apt-get install libseccomp-dev pkg-config"
    exit 1
  fi
  say "installing github.com/opencontainers/runc@$RUNC_VERSION (cgo, seccomp)"
  local t0=$SECONDS tmp="$out/.runc.tmp"
  mkdir -p "$tmp"
  CGO_ENABLED=1 GOBIN="$tmp" go install -trimpath -tags seccomp \
    -ldflags "-s -w -X main.version=${RUNC_VERSION#v}" "github.com/opencontainers/runc@$RUNC_VERSION"
  mv "$tmp/runc" "$out/runc" && rmdir "$tmp"
  say "built runc in $((SECONDS - t0))s"
}

build_cni() {
  # loopback alone makes the node Ready and runs hostNetwork pods; bridge and host-local
  # give the other pods a network inside the node's namespace
  local plugin
  mkdir -p "$out/cni"
  for plugin in main/loopback main/bridge ipam/host-local; do
    [ -x "$out/cni/${plugin#*/}" ] && continue
    say "installing the CNI plugin ${plugin#*/} $CNI_PLUGINS_VERSION"
    GOBIN="$out/cni" go install -trimpath -ldflags "-s -w" \
      "github.com/containernetworking/plugins/plugins/$plugin@$CNI_PLUGINS_VERSION"
  done
}

build_coredns() {
  # the real node's cluster DNS (StatefulSet pods by name behind headless Services): a
  # CoreDNS with only the plugins it uses, the way CoreDNS documents external builds
  [ -x "$out/coredns" ] && return 0
  local work="$cache_root/src/coredns-$COREDNS_VERSION"
  mkdir -p "$work"
  say "building CoreDNS $COREDNS_VERSION (bind, ready, errors, cache, kubernetes)"
  local t0=$SECONDS
  cat > "$work/go.mod" <<GOMOD
module fluidfed.local/coredns

go 1.24.0
GOMOD
  cat > "$work/main.go" <<'GO'
// CoreDNS with the plugins a local cluster's real node needs, in CoreDNS's own order.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"
)

func init() {
	dnsserver.Directives = []string{"bind", "ready", "errors", "cache", "kubernetes"}
}

func main() { coremain.Run() }
GO
  (cd "$work" && go get "github.com/coredns/coredns@$COREDNS_VERSION" >&2 && go mod tidy >&2 \
    && go build -trimpath -ldflags "-s -w" -o "$out/coredns.tmp" .)
  mv "$out/coredns.tmp" "$out/coredns"
  say "built coredns in $((SECONDS - t0))s"
}

build_pause() {
  # the pod sandbox's process, static so that its image is one file (no libc, no registry)
  [ -x "$out/pause" ] && return 0
  if ! command -v gcc >/dev/null 2>&1; then
    say "the sandbox's pause binary needs gcc (apt-get install gcc libc6-dev)"
    exit 1
  fi
  local work="$cache_root/src/pause"
  mkdir -p "$work"
  cat > "$work/pause.c" <<'C'
/* The pod sandbox: hold the namespaces, reap orphans, exit on SIGINT/SIGTERM. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void quit(int sig) { (void)sig; _exit(0); }

static void reap(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(void) {
  struct sigaction stop = {.sa_handler = quit}, child = {.sa_handler = reap,
                                                         .sa_flags = SA_NOCLDSTOP};
  sigaction(SIGINT, &stop, NULL);
  sigaction(SIGTERM, &stop, NULL);
  sigaction(SIGCHLD, &child, NULL);
  for (;;) pause();
  return 1;
}
C
  gcc -static -Os -s -o "$out/pause.tmp" "$work/pause.c"
  mv "$out/pause.tmp" "$out/pause"
}

build_kube
build_kwok
build_etcd
build_etcdutl
build_minio
build_containerd
build_runc
build_cni
build_coredns
build_pause
say "binaries ready in $out"
echo "$out"
