module github.com/slm-operator/slm-operator/hack/argocd-lua

go 1.24

// The versions Argo CD itself builds with (its go.mod), so the harness runs the same VM.
require (
	github.com/yuin/gopher-lua v1.1.1
	layeh.com/gopher-json v0.0.0-20190114024228-97fed8db8427
)
