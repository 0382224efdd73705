// Command argocd-lua runs an Argo CD resource health check the way Argo CD runs it, so that our
// tests exercise the VM Argo CD embeds (gopher-lua, a Lua 5.1 VM in Go) and not a Lua 5.4 binary
// that accepts scripts Argo CD would reject.
//
// Usage:
//
//	argocd-lua [-open-libs] SCRIPT < objects.jsonl > results.jsonl
//
// Each input line is one Kubernetes object as JSON; each output line is the health the script
// returned for it, {"status": "...", "message": "..."}, or {"error": "..."} when Argo CD would
// have failed the check (a Lua error, a non-table return, a timeout).
//
// What is mirrored from Argo CD's util/lua (read, not copied):
//   - a fresh VM per object; the standard libraries are NOT opened unless -open-libs (Argo CD's
//     `useOpenLibs: false`, the default for health checks in argocd-cm); only package, base and
//     table are, plus an `os` with only time() (Argo CD's safe os also has date());
//   - the object as the global `obj`, numbers as Lua numbers, JSON null as nil;
//   - a 1 second deadline;
//   - the returned value must be a table; it is encoded to JSON and read as {status, message},
//     and a status outside Argo CD's set becomes Unknown with "Lua returned an invalid health
//     status".
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	lua "github.com/yuin/gopher-lua"
	luajson "layeh.com/gopher-json"
)

// healthStatus is the shape Argo CD unmarshals a health script's table into.
type healthStatus struct {
	Status  string `json:"status,omitempty"`
	Message string `json:"message,omitempty"`
}

type result struct {
	Status  string `json:"status,omitempty"`
	Message string `json:"message,omitempty"`
	Error   string `json:"error,omitempty"`
}

var validStatuses = map[string]bool{
	"Unknown": true, "Progressing": true, "Suspended": true,
	"Healthy": true, "Degraded": true, "Missing": true,
}

func main() {
	openLibs := flag.Bool("open-libs", false, "open Lua's standard libraries (Argo CD's useOpenLibs: true)")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: argocd-lua [-open-libs] SCRIPT < objects.jsonl")
		os.Exit(2)
	}
	script, err := os.ReadFile(flag.Arg(0))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if err := run(string(script), *openLibs, os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(script string, openLibs bool, in io.Reader, out io.Writer) error {
	reader := bufio.NewReader(in)
	enc := json.NewEncoder(out)
	for {
		line, err := reader.ReadBytes('\n')
		if len(strings.TrimSpace(string(line))) > 0 {
			if encErr := enc.Encode(check(script, openLibs, line)); encErr != nil {
				return encErr
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func check(script string, openLibs bool, objectJSON []byte) result {
	dec := json.NewDecoder(strings.NewReader(string(objectJSON)))
	dec.UseNumber()
	var obj map[string]any
	if err := dec.Decode(&obj); err != nil {
		return result{Error: "input is not a JSON object: " + err.Error()}
	}
	hs, err := executeHealth(script, openLibs, obj)
	if err != nil {
		return result{Error: err.Error()}
	}
	return result{Status: hs.Status, Message: hs.Message}
}

func executeHealth(script string, openLibs bool, obj map[string]any) (*healthStatus, error) {
	L := lua.NewState(lua.Options{SkipOpenLibs: !openLibs})
	defer L.Close()
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.LoadLibName, lua.OpenPackage},
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
	} {
		if err := L.CallByParam(lua.P{Fn: L.NewFunction(lib.open), NRet: 0, Protect: true}, lua.LString(lib.name)); err != nil {
			return nil, err
		}
	}
	if !openLibs {
		safeOs := L.NewTable()
		L.SetField(safeOs, "time", L.NewFunction(func(L *lua.LState) int {
			L.Push(lua.LNumber(time.Now().Unix()))
			return 1
		}))
		L.SetGlobal(lua.OsLibName, safeOs)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	L.SetContext(ctx)
	L.SetGlobal("obj", toLua(L, obj))
	if err := L.DoString(script); err != nil {
		return nil, err
	}
	ret := L.Get(-1)
	if ret.Type() != lua.LTTable {
		return nil, fmt.Errorf("expect table output from Lua script, not %s", ret.Type().String())
	}
	encoded, err := luajson.Encode(ret)
	if err != nil {
		return nil, err
	}
	hs := &healthStatus{}
	if err := json.Unmarshal(encoded, hs); err != nil {
		return nil, err
	}
	if !validStatuses[hs.Status] {
		return &healthStatus{Status: "Unknown", Message: "Lua returned an invalid health status"}, nil
	}
	return hs, nil
}

// toLua turns a decoded JSON value into a Lua value: objects and arrays into tables, numbers into
// Lua numbers (Argo CD hands the script int64/float64 values), null into nil.
func toLua(L *lua.LState, value any) lua.LValue {
	switch v := value.(type) {
	case bool:
		return lua.LBool(v)
	case string:
		return lua.LString(v)
	case json.Number:
		if i, err := v.Int64(); err == nil {
			return lua.LNumber(i)
		}
		f, _ := v.Float64()
		return lua.LNumber(f)
	case []any:
		arr := L.CreateTable(len(v), 0)
		for _, item := range v {
			arr.Append(toLua(L, item))
		}
		return arr
	case map[string]any:
		tbl := L.CreateTable(0, len(v))
		for key, item := range v {
			tbl.RawSetH(lua.LString(key), toLua(L, item))
		}
		return tbl
	}
	return lua.LNil
}
