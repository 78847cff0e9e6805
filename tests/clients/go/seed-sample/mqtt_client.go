// The client wrapper of the Go paho sample the product was born from (seeds/000), unchanged but
// for the broker address, which comes from the -broker flag instead of a public test server.
package main

import MQTT "github.com/eclipse/paho.mqtt.golang"

type client struct {
	mqttClient MQTT.Client
}

func newClient(broker string) (*client, error) {
	opts := MQTT.NewClientOptions()
	opts.AddBroker(broker)
	// The seed's own client id, with its '/', '+', '$' and '{': a broker must take it as it is.
	opts.SetClientID("F`/hty$3{+JQ%,j9")

	mqttClient := MQTT.NewClient(opts)
	if token := mqttClient.Connect(); token.Wait() && token.Error() != nil {
		return nil, token.Error()
	}
	return &client{mqttClient}, nil
}

// Publish publishes at QoS 1, as the seed does.
func (c *client) Publish(msg, topic string) error {
	if token := c.mqttClient.Publish(topic, 1, false, msg); token.Wait() && token.Error() != nil {
		return token.Error()
	}
	return nil
}

// Subsribe (the seed's spelling) subscribes at QoS 0, as the seed does.
func (c *client) Subsribe(topic string, f MQTT.MessageHandler) error {
	if token := c.mqttClient.Subscribe(topic, 0, f); token.Wait() && token.Error() != nil {
		return token.Error()
	}
	return nil
}
