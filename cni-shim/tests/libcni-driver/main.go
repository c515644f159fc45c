// libcni-driver: an independent CNI client for Sluice's tests, built on Debian's libcni
// (golang-github-appc-cni-dev, spec 1.0.0) the way container runtimes use it. It runs one
// command against a conflist and prints ADD's result as JSON on stdout; on failure it
// prints libcni's error on stderr and exits 1.
//
// Build (offline, Debian's Go):
//   GO111MODULE=off GOPATH=/usr/share/gocode go build -o libcni-driver .
// Usage:
//   libcni-driver -conflist F -bin DIR -cache DIR -id CONTAINER -netns PATH [-ifname eth0] add|check|del|validate
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"

	"github.com/containernetworking/cni/libcni"
)

func main() {
	conflist := flag.String("conflist", "", "network config list file")
	bin := flag.String("bin", "", "directory holding the plugin binaries (CNI_PATH)")
	cache := flag.String("cache", "", "libcni's result cache directory")
	id := flag.String("id", "", "container id")
	netns := flag.String("netns", "", "network namespace path")
	ifname := flag.String("ifname", "eth0", "interface name inside the pod")
	flag.Parse()
	if flag.NArg() != 1 {
		fail(fmt.Errorf("one command expected: add, check, del or validate"))
	}
	list, err := libcni.ConfListFromFile(*conflist)
	if err != nil {
		fail(err)
	}
	cni := libcni.NewCNIConfigWithCacheDir([]string{*bin}, *cache, nil)
	rt := &libcni.RuntimeConf{
		ContainerID: *id,
		NetNS:       *netns,
		IfName:      *ifname,
		Args: [][2]string{
			{"K8S_POD_NAMESPACE", "default"},
			{"K8S_POD_NAME", *id},
		},
	}
	ctx := context.Background()
	switch flag.Arg(0) {
	case "add":
		result, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			fail(err)
		}
		out, err := json.Marshal(result)
		if err != nil {
			fail(err)
		}
		fmt.Println(string(out))
	case "check":
		err = cni.CheckNetworkList(ctx, list, rt)
	case "del":
		err = cni.DelNetworkList(ctx, list, rt)
	case "validate":
		var caps []string
		caps, err = cni.ValidateNetworkList(ctx, list)
		if err == nil {
			fmt.Println(caps)
		}
	default:
		err = fmt.Errorf("unknown command %q", flag.Arg(0))
	}
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
