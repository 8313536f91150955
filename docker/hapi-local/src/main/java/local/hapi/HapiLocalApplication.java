package local.hapi;

import ca.uhn.fhir.batch2.coordinator.JobDefinitionRegistry;
import ca.uhn.fhir.jpa.packages.IPackageInstallerSvc;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.springframework.beans.factory.ListableBeanFactory;
import org.springframework.boot.Banner;
import org.springframework.boot.SpringApplication;
import org.springframework.boot.WebApplicationType;
import org.springframework.boot.web.embedded.tomcat.TomcatServletWebServerFactory;
import org.springframework.context.ConfigurableApplicationContext;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;
import org.springframework.context.annotation.Import;

import java.net.InetAddress;
import java.net.UnknownHostException;

/**
 * Entry point. Spring Boot is only used for its embedded Tomcat and executable-jar packaging:
 * there is deliberately no {@code @EnableAutoConfiguration} (HAPI drags springdoc, thymeleaf,
 * elasticsearch, quartz ... onto the classpath and we want none of their auto-configurations).
 * Every bean comes from HAPI's own configuration classes or from the classes in this package.
 */
@Configuration
@Import({JpaServerConfig.class, RestServerConfig.class})
public class HapiLocalApplication {

	private static final Logger ourLog = LoggerFactory.getLogger(HapiLocalApplication.class);

	public static void main(String[] args) {
		long start = System.currentTimeMillis();
		SpringApplication app = new SpringApplication(HapiLocalApplication.class);
		app.setWebApplicationType(WebApplicationType.SERVLET);
		app.setBannerMode(Banner.Mode.OFF);
		// HAPI's configuration has bean cycles (the starter sets spring.main.allow-circular-references too)
		app.setAllowCircularReferences(true);
		app.setRegisterShutdownHook(true);
		ConfigurableApplicationContext ctx = app.run(args);
		ourLog.info(
				"HAPI FHIR server ready at http://{}:{}/fhir (started in {} ms)",
				"0.0.0.0".equals(Env.bindAddress()) ? "127.0.0.1" : Env.bindAddress(),
				Env.port(),
				System.currentTimeMillis() - start);
	}

	@Bean
	public TomcatServletWebServerFactory servletWebServerFactory() throws UnknownHostException {
		TomcatServletWebServerFactory factory = new TomcatServletWebServerFactory(Env.port());
		factory.setAddress(InetAddress.getByName(Env.bindAddress()));
		factory.addConnectorCustomizers(connector -> {
			// FHIR search syntax uses characters Tomcat rejects by default when they are not percent-encoded
			// (e.g. identifier=system|value, _include=Condition:subject is fine, but | [ ] { } are not)
			connector.setProperty("relaxedQueryChars", "|[]{}^`\"<>\\");
			connector.setProperty("relaxedPathChars", "|[]{}^`\"<>\\");
		});
		return factory;
	}

	@Bean
	public PackageLoader packageLoader(
			IPackageInstallerSvc thePackageInstallerSvc,
			JobDefinitionRegistry theJobDefinitionRegistry,
			ListableBeanFactory theBeanFactory) {
		return new PackageLoader(thePackageInstallerSvc, theJobDefinitionRegistry, theBeanFactory);
	}
}
