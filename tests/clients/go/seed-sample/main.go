// The seed's sample program: subscribe to a topic and publish "Hello World" to it on one client.
// The seed sleeps 6 s to see the message; this waits for it instead (at most 10 s) and exits 1
// if it never comes, so a test can tell.
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	MQTT "github.com/eclipse/paho.mqtt.golang"
)

func main() {
	broker := flag.String("broker", "tcp://localhost:1883", "broker URL")
	flag.Parse()
	topic := "/mqtt-explanation-klutzer"

	c, err := newClient(*broker)
	if err != nil {
		fmt.Fprintf(os.Stderr, "connect: %v\n", err)
		os.Exit(2)
	}

	received := make(chan struct{}, 1)
	if err := c.Subsribe(topic, func(_ MQTT.Client, m MQTT.Message) {
		fmt.Printf("Message: %s \n", m.Payload())
		fmt.Printf("Topic: %s \n", m.Topic())
		received <- struct{}{}
	}); err != nil {
		panic(err)
	}

	if err := c.Publish("Hello World", topic); err != nil {
		panic(err)
	}

	select {
	case <-received:
		c.mqttClient.Disconnect(250)
	case <-time.After(10 * time.Second):
		fmt.Fprintln(os.Stderr, "no message within 10 s")
		os.Exit(1)
	}
}
