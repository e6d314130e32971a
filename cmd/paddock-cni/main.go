// Command paddock-cni is the paddock CNI plugin, installed as "paddock" in
// the CNI bin dir. See package plugin.
package main

import (
	"runtime"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"
	bv "github.com/containernetworking/plugins/pkg/utils/buildversion"

	"github.com/paddock-sandbox/paddock/plugin"
)

// Namespace switches affect one OS thread; keeping main on the thread group
// leader means every setns happens on a thread the plugin controls.
func init() { runtime.LockOSThread() }

func main() {
	skel.PluginMainFuncs(skel.CNIFuncs{Add: plugin.Add, Check: plugin.Check, Del: plugin.Del, Status: plugin.Status, GC: plugin.GC},
		version.PluginSupports("0.4.0", "1.0.0", "1.1.0"), bv.BuildString("paddock"))
}
