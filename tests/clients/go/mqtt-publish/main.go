// The Go publish component of seeds/001 (`go run mqtt_publish.go -t "test/topic" -m "Hello
// world!"`), with mosquitto_pub's -h/-p/-q/-u/-P/-r flags so it can point at any broker.
package main

import (
	"flag"
	"fmt"
	"os"
	"strconv"

	MQTT "github.com/eclipse/paho.mqtt.golang"
)

func main() {
	host := flag.String("h", "localhost", "broker host")
	port := flag.Int("p", 1883, "broker port")
	topic := flag.String("t", "test/topic", "topic")
	message := flag.String("m", "Hello world!", "message")
	qos := flag.Int("q", 1, "QoS (0, 1 or 2)")
	retain := flag.Bool("r", false, "retain")
	user := flag.String("u", "", "username")
	password := flag.String("P", "", "password")
	id := flag.String("i", "", "client id (default: random)")
	flag.Parse()

	opts := MQTT.NewClientOptions()
	opts.AddBroker("tcp://" + *host + ":" + strconv.Itoa(*port))
	if *id != "" {
		opts.SetClientID(*id)
	}
	if *user != "" {
		opts.SetUsername(*user)
		opts.SetPassword(*password)
	}
	client := MQTT.NewClient(opts)
	if token := client.Connect(); token.Wait() && token.Error() != nil {
		fmt.Fprintf(os.Stderr, "connect: %v\n", token.Error())
		os.Exit(2)
	}
	token := client.Publish(*topic, byte(*qos), *retain, *message)
	token.Wait()
	if token.Error() != nil {
		fmt.Fprintf(os.Stderr, "publish: %v\n", token.Error())
		os.Exit(1)
	}
	fmt.Println("published")
	client.Disconnect(250)
}
