// Command etcd is upstream etcd's server entry point; etcd's own main module
// cannot be `go install`ed (it uses replace directives), so this wrapper pins it.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
