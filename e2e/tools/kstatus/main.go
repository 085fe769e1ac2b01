// Command kstatus prints what sigs.k8s.io/cli-utils' kstatus computes for each
// object read from stdin (YAML documents or JSON; a List's items one by one):
// one JSON line per object with its kind, name, status (InProgress, Failed,
// Current, Terminating, NotFound, Unknown) and message. kstatus is the reader
// behind Flux's health checks, so this is what Flux concludes about an object.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type result struct {
	Kind    string `json:"kind"`
	Name    string `json:"name"`
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kstatus:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer) error {
	decoder := yaml.NewYAMLOrJSONDecoder(bufio.NewReader(in), 4096)
	encoder := json.NewEncoder(out)
	for {
		var raw json.RawMessage
		if err := decoder.Decode(&raw); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if len(raw) == 0 || string(raw) == "null" {
			continue // an empty YAML document
		}
		// Unstructured's own JSON decoding keeps integers as int64, as kstatus expects of
		// metadata.generation and status.observedGeneration.
		obj := &unstructured.Unstructured{}
		if err := obj.UnmarshalJSON(raw); err != nil {
			return err
		}
		objects := []unstructured.Unstructured{*obj}
		if obj.IsList() {
			list, err := obj.ToList()
			if err != nil {
				return err
			}
			objects = list.Items
		}
		for i := range objects {
			computed, err := status.Compute(&objects[i])
			if err != nil {
				return fmt.Errorf("%s %s: %w", objects[i].GetKind(), objects[i].GetName(), err)
			}
			if err := encoder.Encode(result{objects[i].GetKind(), objects[i].GetName(),
				computed.Status.String(), computed.Message}); err != nil {
				return err
			}
		}
	}
}
