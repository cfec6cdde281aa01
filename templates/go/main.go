// A minimal HTTP server: edit me! It listens on $HOST:$PORT (default 0.0.0.0:3000).
package main

import (
	"fmt"
	"log"
	"net/http"
	"os"
)

func main() {
	port := os.Getenv("PORT")
	if port == "" {
		port = "3000"
	}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "Hello from your Go REPL!")
	})
	log.Printf("listening on port %s", port)
	log.Fatal(http.ListenAndServe(os.Getenv("HOST")+":"+port, nil))
}
